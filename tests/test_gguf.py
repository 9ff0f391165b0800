"""A GGUF file as the base model (transformers' gguf_file= loading), on a tiny GGUF written here."""

from __future__ import annotations

import json

import pytest
import torch

from fragua.data.ingest import collect
from fragua.settings import DataSettings, TrainSettings

from .conftest import EXAMPLES

gguf = pytest.importorskip("gguf")


def permute_for_gguf(weights: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's rotary layout of q/k rows (transformers reverses it when loading)."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def write_gguf(model_dir, path) -> None:
    """The tiny Llama and its byte-level BPE tokenizer as a float32 GGUF, as llama.cpp's converter lays it out."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    vocab = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    tokens = [token for token, _ in sorted(vocab["vocab"].items(), key=lambda item: item[1])]
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in vocab["merges"]])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_bos_token_id(tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    state = {k: v for k, v in model.state_dict().items()}
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    for name, tensor in state.items():
        if name.endswith("q_proj.weight"):
            tensor = permute_for_gguf(tensor, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            tensor = permute_for_gguf(tensor, config.num_key_value_heads)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tiny_base, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "fragua-tiny-f32.gguf"
    write_gguf(tiny_base, path)
    return path


def test_a_gguf_file_loads_as_the_same_model_and_tokenizer(tiny_base, tiny_tokenizer, tiny_gguf):
    from transformers import AutoModelForCausalLM

    from fragua.models.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_gguf))
    text = "¿A qué hora es el check-in? The learning rate matters."
    assert tokenizer(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]
    assert tokenizer.chat_template == tiny_tokenizer.chat_template
    settings = TrainSettings(base_model=str(tiny_gguf))
    model = load_causal_lm(str(tiny_gguf), settings).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    ids = torch.tensor([tiny_tokenizer(text)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)


def test_training_from_a_gguf_base_saves_an_adapter_that_loads_over_it(tiny_gguf, tmp_path):
    from fragua.models.loading import load_for_inference
    from fragua.train.trainer import train

    records = [r for r in collect(DataSettings(sources=[{"path": str(EXAMPLES / "batch1")}])).records if r.split == "train"][:32]
    settings = TrainSettings(base_model=str(tiny_gguf), max_steps=2, batch_size=8, save_steps=100, logging_steps=1)
    report = train(base_model=str(tiny_gguf), settings=settings, train_records=records, eval_records=[],
                   run_dir=tmp_path / "run", report_to=[], run_name="gguf")
    assert report.global_step == 2 and report.base_model == str(tiny_gguf)
    adapter_config = json.loads((tmp_path / "run" / "model" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_gguf)
    loaded = load_for_inference(tmp_path / "run" / "model", settings)
    assert loaded.model.peft_config["default"].r == settings.lora.r


def test_a_missing_gguf_file_is_reported(tmp_path):
    from fragua.models.loading import ModelLoadError, load_tokenizer

    with pytest.raises(ModelLoadError, match="does not exist"):
        load_tokenizer("model.gguf")
