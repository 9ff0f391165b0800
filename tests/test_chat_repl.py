"""The chat loop, driven through its input stream with the tiny model."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from fragua.cli import app
from fragua.data.records import Message
from fragua.inference.chat import Responder, chat_loop
from fragua.models.loading import load_for_inference
from fragua.models.templates import generation_prompt, stop_token_ids
from fragua.settings import ChatSettings, TrainSettings

GREEDY = ChatSettings(do_sample=False, max_new_tokens=12, repetition_penalty=1.0, system_prompt="You are the front desk of Hotel Fragua.")


@pytest.fixture(scope="module")
def tiny(tiny_base):
    return load_for_inference(str(tiny_base), TrainSettings())


def greedy_reply(tiny, messages: list[Message], max_new_tokens: int) -> str:
    """What the model answers, computed without the chat code."""
    ids = tiny.tokenizer(generation_prompt(tiny.tokenizer, messages), return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        output = tiny.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=stop_token_ids(tiny.tokenizer), pad_token_id=tiny.tokenizer.pad_token_id)
    return tiny.tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()


def drive(responder: Responder, script: str, tmp_path) -> tuple[str, list]:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    saved = chat_loop(responder, input_stream=io.StringIO(script), console=console, model_label="tiny-test", save_dir=tmp_path / "chats",
                      header={"version": None})
    return console.file.getvalue(), saved


def test_chat_loop_answers_saves_starts_over_and_exits(tiny, tmp_path):
    first = tmp_path / "first.json"
    script = "\n".join([
        "/help", "What time is check-in?", f"/save {first}", "/new", "/save", "/bogus", "", "And breakfast?", "/save", "/exit",
        "this line is never read",
    ]) + "\n"
    output, saved = drive(Responder(tiny.model, tiny.tokenizer, GREEDY), script, tmp_path)

    assert "/save [FILE]" in output and "/new" in output  # /help
    assert "unknown command /bogus" in output
    assert "nothing to save yet: the conversation is empty" in output  # right after /new
    assert "this line is never read" not in output and output.rstrip().endswith("bye")
    assert saved[0] == first and len(saved) == 2 and saved[1].parent == tmp_path / "chats"

    transcript = json.loads(first.read_text())
    system = Message(role="system", content=GREEDY.system_prompt)
    question = Message(role="user", content="What time is check-in?")
    assert [m["role"] for m in transcript["messages"]] == ["system", "user", "assistant"]
    assert transcript["messages"][2]["content"] == greedy_reply(tiny, [system, question], GREEDY.max_new_tokens)
    assert transcript["model"] == "tiny-test" and transcript["settings"]["do_sample"] is False
    assert f"model › {transcript['messages'][2]['content']}" in output

    second = json.loads(saved[1].read_text())
    assert [m["content"] for m in second["messages"][:2]] == [GREEDY.system_prompt, "And breakfast?"]  # /new forgot the first question


def test_end_of_input_ends_the_chat(tiny, tmp_path):
    output, saved = drive(Responder(tiny.model, tiny.tokenizer, GREEDY), "hello", tmp_path)
    assert "model ›" in output and output.rstrip().endswith("bye") and saved == []


def test_a_long_conversation_drops_its_oldest_turns_but_keeps_the_system_message(tiny):
    settings = GREEDY.model_copy(update={"max_new_tokens": 440})  # leaves 512 - 440 = 72 prompt tokens
    responder = Responder(tiny.model, tiny.tokenizer, settings)
    messages = [Message(role="system", content="Be brief.")]
    for turn in range(4):
        messages += [Message(role="user", content=f"Question number {turn} about the hotel pool?"),
                     Message(role="assistant", content=f"Answer number {turn}: the pool is on the eighth floor.")]
    messages.append(Message(role="user", content="And the gym?"))
    tokens, dropped = responder.fit(messages)
    assert dropped > 0 and len(tokens) <= 72
    prompt = tiny.tokenizer.decode(tokens)
    assert prompt.startswith("<|im_start|>system\nBe brief.") and "And the gym?" in prompt and "Question number 0" not in prompt


def test_generation_settings_reach_generate_only_when_they_apply(tiny):
    greedy = Responder(tiny.model, tiny.tokenizer, GREEDY).generation_kwargs()
    assert greedy["do_sample"] is False and "temperature" not in greedy and "top_p" not in greedy
    sampling = Responder(tiny.model, tiny.tokenizer, ChatSettings(temperature=0.3, top_k=0, top_p=0.5, repetition_penalty=1.3)).generation_kwargs()
    assert (sampling["temperature"], sampling["top_k"], sampling["top_p"], sampling["repetition_penalty"]) == (0.3, 0, 0.5, 1.3)
    with pytest.raises(ValueError, match=r"chat.max_new_tokens \(512\) leaves no room"):
        Responder(tiny.model, tiny.tokenizer, ChatSettings(max_new_tokens=512))


def test_a_seed_makes_sampled_replies_reproducible(tiny):
    settings = ChatSettings(seed=7, temperature=1.5, max_new_tokens=10)
    prompt = Responder(tiny.model, tiny.tokenizer, settings).fit([Message(role="user", content="hi")])[0]
    replies = ["".join(Responder(tiny.model, tiny.tokenizer, settings).stream(prompt)) for _ in range(2)]
    assert replies[0] == replies[1]


runner = CliRunner()


def test_fragua_chat_with_a_local_folder(tiny_base, tmp_path):
    result = runner.invoke(app, ["--work-dir", str(tmp_path), "chat", "--path", str(tiny_base), "--greedy", "--max-new-tokens", "4"],
                           input="hi\n/exit\n")
    assert result.exit_code == 0, result.output
    assert f"Chatting with {tiny_base}" in result.output and "model ›" in result.output and "bye" in result.output


def test_fragua_chat_rejects_bad_generation_settings_and_ambiguous_models(tiny_base, tmp_path):
    bad = runner.invoke(app, ["--work-dir", str(tmp_path), "chat", "--path", str(tiny_base), "--top-p", "1.5"])
    assert bad.exit_code == 2 and "chat.top_p" in bad.output and "less than or equal to 1" in bad.output
    assert "[set it with --set chat.top_p=…, FRAGUA_CHAT__TOP_P" in " ".join(bad.output.split())
    both = runner.invoke(app, ["--work-dir", str(tmp_path), "chat", "--path", str(tiny_base), "--version", "fragua-tiny-v1"])
    assert both.exit_code == 2 and "not --version and --path" in " ".join(both.output.split())
    nothing = runner.invoke(app, ["--work-dir", str(tmp_path), "chat"])
    assert nothing.exit_code == 1 and "alias 'production' points to no version" in " ".join(nothing.output.split())
