from __future__ import annotations

from fragua.data.records import Message
from fragua.models.templates import CHATML_TEMPLATE, IGNORE_INDEX, IM_END, encode_conversation, ensure_chat_template, generation_prompt

CONVERSATION = [
    Message(role="system", content="You are the front desk."),
    Message(role="user", content="¿A qué hora es el check-in?"),
    Message(role="assistant", content="El check-in empieza a las 15:00."),
    Message(role="user", content="And check-out?"),
    Message(role="assistant", content="Check-out is at 11:00 am."),
]


def trained_text(tokenizer, encoded) -> str:
    return tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX])


def test_only_assistant_tokens_are_trained(tiny_tokenizer):
    encoded = encode_conversation(tiny_tokenizer, CONVERSATION[:3], max_length=512)
    assert trained_text(tiny_tokenizer, encoded) == f"El check-in empieza a las 15:00.{IM_END}\n"
    assert len(encoded.labels) == len(encoded.input_ids)
    prompt_part = [t for t, label in zip(encoded.input_ids, encoded.labels) if label == IGNORE_INDEX]
    assert "check-in?" in tiny_tokenizer.decode(prompt_part)


def test_every_assistant_turn_of_a_multi_turn_chat_is_trained(tiny_tokenizer):
    encoded = encode_conversation(tiny_tokenizer, CONVERSATION, max_length=512)
    assert trained_text(tiny_tokenizer, encoded) == f"El check-in empieza a las 15:00.{IM_END}\nCheck-out is at 11:00 am.{IM_END}\n"


def test_truncation_is_reported(tiny_tokenizer):
    encoded = encode_conversation(tiny_tokenizer, CONVERSATION, max_length=10)
    assert encoded.truncated and len(encoded.input_ids) == 10
    assert encoded.trained_tokens == 0


def test_generation_prompt_ends_with_the_assistant_header(tiny_tokenizer):
    prompt = generation_prompt(tiny_tokenizer, CONVERSATION[:2])
    assert prompt.endswith("<|im_start|>assistant\n")


def test_template_less_tokenizer_gets_chatml_that_is_saved(tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    bare = PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|endoftext|>")
    assert not bare.chat_template
    ensure_chat_template(bare)
    assert bare.chat_template == CHATML_TEMPLATE and bare.pad_token is not None
    bare.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.chat_template == CHATML_TEMPLATE
    encoded = encode_conversation(reloaded, CONVERSATION[1:3], max_length=512)
    assert trained_text(reloaded, encoded) == f"El check-in empieza a las 15:00.{IM_END}\n"


def test_missing_chatml_tokens_are_added_and_reported(tiny_tokenizer):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"hello": 0, "<unk>": 1, "</s>": 2}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="</s>")
    added = ensure_chat_template(tokenizer)
    assert added == ["<|im_start|>", "<|im_end|>"]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") != tokenizer.unk_token_id
