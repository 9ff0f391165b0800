"""The vLLM engine on machines without a GPU: its command line and settings, its refusal where vLLM
cannot run, and its whole path (registry fetch, process start and stop, adapter loading and
eviction, streamed answers, errors) against tests/fake_vllm.py, a real HTTP server speaking vLLM's
OpenAI and LoRA endpoints. That is a protocol test: no model runs. tests/test_serve_vllm_gpu.py
runs the same engine on real vLLM where CUDA and vLLM are present."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from fragua.data.records import Message
from fragua.registry import open_registry
from fragua.serve import vllm as vllm_module
from fragua.serve.engine import (
    Completion,
    EngineError,
    ModelUnavailable,
    Overloaded,
    Prompt,
    PromptTooLong,
    SamplingParams,
    TextDelta,
)
from fragua.serve.vllm import (
    VllmEngine,
    VllmUnavailable,
    cuda_available,
    find_vllm,
    vllm_refusal,
)
from fragua.serve.vllm_process import (
    LaunchSpec,
    engine_error,
    error_message,
    vllm_command,
    vllm_environment,
)

from .conftest import make_settings

FAKE_VLLM = Path(__file__).with_name("fake_vllm.py")


# The command line and settings ------------------------------------------------------------


async def load_once(settings, registry, version: str) -> None:
    """A fresh engine loads ``version`` and closes, whatever happened."""
    engine = VllmEngine(settings, registry)
    try:
        await engine.load(version)
    finally:
        await engine.close()


def test_command_for_a_base_enables_lora_with_the_serve_settings(tmp_path):
    settings = make_settings(tmp_path, serve={
        "max_batch_size": 32, "vllm_max_loras": 3, "vllm_max_lora_rank": 128, "vllm_max_bases": 2,
        "vllm_gpu_memory_utilization": 0.8, "vllm_extra_args": ["--max-model-len", "8192"],
    })
    command = vllm_command("/opt/vllm/bin/vllm", LaunchSpec("Qwen/Qwen2.5-0.5B", "fragua-base", lora=True), 41234, settings)
    assert command == [
        "/opt/vllm/bin/vllm", "serve", "Qwen/Qwen2.5-0.5B", "--host", "127.0.0.1", "--port", "41234",
        "--served-model-name", "fragua-base", "--gpu-memory-utilization", "0.4", "--max-num-seqs", "32",
        "--enable-lora", "--max-loras", "3", "--max-cpu-loras", "3", "--max-lora-rank", "128",
        "--max-model-len", "8192",
    ]


def test_command_for_a_full_fine_tune_has_no_lora_and_passes_trust_remote_code(tmp_path):
    settings = make_settings(tmp_path, train={"trust_remote_code": True})
    command = vllm_command("vllm", LaunchSpec("/cache/fragua-tiny-v3", "fragua-tiny-v3", lora=False), 5000, settings)
    assert "--enable-lora" not in command and not any("lora" in argument for argument in command)
    assert command[-1] == "--trust-remote-code"
    assert command[command.index("--served-model-name") + 1] == "fragua-tiny-v3"


def test_environment_holds_the_key_and_runtime_lora_switch_only_for_adapters():
    with_lora = vllm_environment("k3y", LaunchSpec("base", "fragua-base", lora=True))
    without = vllm_environment("k3y", LaunchSpec("/full", "v3", lora=False))
    assert with_lora["VLLM_API_KEY"] == without["VLLM_API_KEY"] == "k3y"
    assert with_lora["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in without or os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING")


@pytest.mark.parametrize("argument", ["--port", "--port=9000", "--max-loras", "--enable-lora", "--gpu-memory-utilization=0.5"])
def test_extra_args_may_not_repeat_what_fragua_sets(tmp_path, argument):
    with pytest.raises(ValidationError) as caught:
        make_settings(tmp_path, serve={"vllm_extra_args": [argument, "1"]})
    assert f"serve.vllm_extra_args sets {argument.split('=')[0]}" in str(caught.value)


def test_max_lora_rank_takes_only_ranks_vllm_accepts(tmp_path):
    with pytest.raises(ValidationError, match="vllm_max_lora_rank"):
        make_settings(tmp_path, serve={"vllm_max_lora_rank": 48})


# Refusal where vLLM cannot run -------------------------------------------------------------


def test_refusals_say_what_to_do_in_one_line(tmp_path):
    serve = make_settings(tmp_path).serve
    no_gpu = vllm_refusal(serve, executable="/usr/bin/vllm", cuda=False)
    not_installed = vllm_refusal(serve, executable=None, cuda=True)
    wrong_path = vllm_refusal(make_settings(tmp_path, serve={"vllm_executable": "/nowhere/vllm"}).serve, executable=None, cuda=True)
    assert "CUDA" in no_gpu and "serve.engine = 'local'" in no_gpu
    assert "pip install 'fragua[vllm]'" in not_installed
    assert "/nowhere/vllm" in wrong_path and "serve.vllm_executable" in wrong_path
    assert all("\n" not in message for message in (no_gpu, not_installed, wrong_path))
    assert vllm_refusal(serve, executable="/usr/bin/vllm", cuda=True) is None


def test_engine_refuses_on_this_machine_when_vllm_cannot_run(tmp_path):
    settings = make_settings(tmp_path, serve={"engine": "vllm"})
    if cuda_available() and find_vllm(settings.serve):
        pytest.skip("this machine has CUDA and vLLM: tests/test_serve_vllm_gpu.py runs the engine")
    with pytest.raises(VllmUnavailable) as caught:
        VllmEngine(settings, open_registry(settings))
    assert str(caught.value) == vllm_refusal(settings.serve, executable=find_vllm(settings.serve), cuda=cuda_available())


# vLLM's error bodies ------------------------------------------------------------------------


def test_error_bodies_of_current_and_older_vllm_and_fastapi_are_read():
    assert error_message(b'{"error": {"message": "The model `x` does not exist.", "type": "NotFoundError", "code": 404}}') == "The model `x` does not exist."
    assert error_message(b'{"object": "error", "message": "old style", "type": "BadRequestError", "code": 400}') == "old style"
    assert error_message(b'{"detail": "Request chat templates require --trust-request-chat-template."}').startswith("Request chat templates")
    assert error_message(b"Internal Server Error") == "Internal Server Error"


@pytest.mark.parametrize(("status", "message", "kind"), [
    (400, "This model's maximum context length is 64 tokens. However, you requested 90 tokens", PromptTooLong),
    (400, "temperature must be non-negative", EngineError),
    (404, "The model `fragua-tiny-v9` does not exist.", ModelUnavailable),
    (429, "too many requests", Overloaded),
    (503, "engine is sleeping", Overloaded),
    (500, "CUDA error", ModelUnavailable),
])
def test_statuses_become_engine_errors(status, message, kind):
    error = engine_error(status, message)
    assert type(error) is kind and message in str(error)


# The engine against the protocol stand-in ----------------------------------------------------


def _run(coroutine):
    return asyncio.run(coroutine)


def _fake_executable(folder: Path) -> Path:
    script = folder / "vllm"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_VLLM}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def _publish(registry, folder: Path, lineage: dict) -> str:
    version = registry.allocate("tiny")
    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    registry.publish(version, files, {"lineage": lineage})
    return version


def _adapter_folder(folder: Path, base: Path, rank: int) -> Path:
    """An adapter version's files: peft's config, safetensors weights, the base's tokenizer. The
    stand-in only checks the config is there; real vLLM reads the weights (GPU test)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "base_model_name_or_path": str(base), "target_modules": ["q_proj"]}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(rank, 8)}, str(folder / "adapter_model.safetensors"))
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copy(base / name, folder / name)
    return folder


@pytest.fixture
def served(tmp_path, tiny_base, monkeypatch):
    """Settings for the vLLM engine with the stand-in as its vllm command, and a registry holding two
    adapter versions of the tiny base and one full fine-tune. CUDA is reported present: the stand-in needs none."""
    monkeypatch.setattr(vllm_module, "cuda_available", lambda: True)
    settings = make_settings(tmp_path / "work", train={"base_model": str(tiny_base)}, serve={
        "engine": "vllm", "vllm_executable": str(_fake_executable(tmp_path)), "vllm_max_loras": 1, "vllm_max_bases": 1,
        "vllm_startup_timeout_s": 120, "vllm_extra_args": ["--max-model-len", "64"], "max_prompt_tokens": 1000,
    })
    registry = open_registry(settings)
    lineage = {"base_model": str(tiny_base), "method": "lora"}
    first = _publish(registry, _adapter_folder(tmp_path / "a1", tiny_base, 8), lineage)
    second = _publish(registry, _adapter_folder(tmp_path / "a2", tiny_base, 8), lineage)
    full = _publish(registry, tiny_base, {"base_model": str(tiny_base), "method": "full"})
    return settings, registry, (first, second, full)


async def _answer(engine, version, prompt, params) -> tuple[list[str], Completion]:
    pieces, completion = [], None
    async for item in engine.generate(version, prompt, params):
        if isinstance(item, TextDelta):
            pieces.append(item.text)
        else:
            completion = item
    return pieces, completion


async def _fake_state(engine, path: str):
    process = next(iter(engine._processes.values()))
    return (await process.client.get(path)).json()


CHAT = Prompt(messages=[Message(role="user", content="what is forged iron called")])


@pytest.mark.slow(seconds=20)
def test_adapters_load_into_one_vllm_and_answers_stream_with_usage(served):
    settings, registry, (first, _, _) = served

    async def scenario():
        engine = VllmEngine(settings, registry)
        try:
            pieces, completion = await _answer(engine, first, CHAT, SamplingParams(max_tokens=6, temperature=0, seed=7, stop=("###",)))
            launch = await _fake_state(engine, "/fake/launch")
            request = (await _fake_state(engine, "/fake/requests"))[-1]
            models = [card["id"] for card in (await _fake_state(engine, "/v1/models"))["data"]]
            text_pieces, text_completion = await _answer(engine, first, Prompt(text="iron and fire"), SamplingParams(max_tokens=3))
            return pieces, completion, launch, request, models, text_pieces, text_completion, engine.stats()
        finally:
            await engine.close()

    pieces, completion, launch, request, models, text_pieces, text_completion, stats = _run(scenario())
    assert "".join(pieces) == completion.text == f"{first} heard <|im_start|>assistant more more more"
    assert completion.finish_reason == "length" and completion.completion_tokens == 6
    assert completion.prompt_tokens == len(request["prompt"].split())
    # The version's chat template rendered the prompt; vLLM adds no special tokens to it and stops at the end-of-turn token.
    assert request["prompt"].endswith("<|im_start|>assistant\n") and request["add_special_tokens"] is False
    assert request["model"] == first and request["stop_token_ids"] and request["seed"] == 7 and request["stop"] == ["###"]
    assert request["stream_options"] == {"include_usage": True} and request["temperature"] == 0
    assert launch["runtime_lora"] and launch["api_key_set"] and launch["extra"] == []
    assert "--enable-lora" in launch["argv"] and launch["argv"][launch["argv"].index("--max-loras") + 1] == "1"
    assert models == ["fragua-base", first]
    assert "".join(text_pieces) == text_completion.text == f"{first} heard fire" and text_completion.finish_reason == "length"
    assert stats.loaded == [first] and stats.running == stats.waiting == 0


@pytest.mark.slow(seconds=25)
def test_alias_move_unloads_the_least_recently_used_adapter_and_a_full_fine_tune_gets_its_own_process(served):
    settings, registry, (first, second, full) = served
    params = SamplingParams(max_tokens=4, temperature=0)

    async def scenario():
        engine = VllmEngine(settings, registry)
        try:
            await engine.load(first)
            adapters_process = next(iter(engine._processes.values()))
            worker = (await _fake_state(engine, "/fake/launch"))["worker_pid"]
            await engine.load(second)  # production moved: one adapter slot (vllm_max_loras = 1)
            models_after_move = [card["id"] for card in (await _fake_state(engine, "/v1/models"))["data"]]
            loaded_after_move = engine.stats().loaded
            _, answer = await _answer(engine, second, CHAT, params)
            _, full_answer = await _answer(engine, full, CHAT, params)  # another base: one process (vllm_max_bases = 1)
            full_launch = await _fake_state(engine, "/fake/launch")
            return adapters_process, worker, models_after_move, loaded_after_move, answer, full_answer, full_launch, engine.stats()
        finally:
            await engine.close()

    adapters_process, worker, models_after_move, loaded_after_move, answer, full_answer, full_launch, stats = _run(scenario())
    assert models_after_move == ["fragua-base", second] and loaded_after_move == [second]
    assert answer.text.startswith(f"{second} heard")
    assert full_answer.text.startswith(f"{full} heard")
    assert "--enable-lora" not in full_launch["argv"] and not full_launch["runtime_lora"]
    assert stats.loaded == [full]
    # The adapters' vLLM ended with its whole process group (its engine-core child too).
    assert adapters_process.process.poll() is not None
    assert not Path(f"/proc/{worker}").exists() or "zombie" in Path(f"/proc/{worker}/status").read_text().lower()


@pytest.mark.slow(seconds=20)
def test_requests_vllm_cannot_take_become_engine_errors(served):
    settings, registry, (first, _, _) = served

    async def scenario():
        engine = VllmEngine(settings, registry)
        try:
            long_prompt = Prompt(text=" ".join(["word"] * 60))
            with pytest.raises(PromptTooLong, match="maximum context length is 64"):
                await _answer(engine, first, long_prompt, SamplingParams(max_tokens=10))
            pieces = []
            with pytest.raises(ModelUnavailable, match="illegal memory access"):
                async for item in engine.generate(first, Prompt(text="FAIL-MIDSTREAM now"), SamplingParams(max_tokens=5)):
                    pieces.append(item)
            engine.settings = engine.settings.model_copy(update={"serve": engine.settings.serve.model_copy(update={"max_prompt_tokens": 5})})
            with pytest.raises(PromptTooLong, match=r"serve.max_prompt_tokens \(5\)"):
                await _answer(engine, first, long_prompt, SamplingParams(max_tokens=10))
            with pytest.raises(ModelUnavailable, match="no version 'fragua-tiny-v99'"):
                await engine.load("fragua-tiny-v99")
            return pieces, engine.stats()
        finally:
            await engine.close()

    pieces, stats = _run(scenario())
    assert pieces == [TextDelta(f"{first}")]
    assert stats.running == 0


def test_an_adapter_above_the_rank_limit_is_refused_naming_the_field(served, tmp_path, tiny_base):
    settings, registry, _ = served
    wide = _publish(registry, _adapter_folder(tmp_path / "wide", tiny_base, 128), {"base_model": str(tiny_base), "method": "lora"})

    with pytest.raises(ModelUnavailable, match=r"rank 128, above serve.vllm_max_lora_rank \(64\)"):
        _run(load_once(settings, registry, wide))


@pytest.mark.slow(seconds=15)
def test_a_vllm_that_dies_while_loading_is_reported_with_its_log(served, monkeypatch):
    settings, registry, (first, _, _) = served
    monkeypatch.setenv("FAKE_VLLM_EXIT", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(ModelUnavailable) as caught:
        _run(load_once(settings, registry, first))
    message = str(caught.value)
    log = Path(message.rsplit("(full log: ", 1)[1].rstrip(")"))
    assert "exited with code 1" in message and "CUDA out of memory" in message
    assert log.is_file() and log.parent == settings.work_path / "serve" / "vllm"
    assert log.read_text().startswith(f"$ {settings.serve.vllm_executable} serve ")


@pytest.mark.slow(seconds=20)
def test_a_vllm_that_never_answers_health_is_stopped_after_the_timeout(served, monkeypatch):
    settings, registry, (first, _, _) = served
    monkeypatch.setenv("FAKE_VLLM_HANG", "1")
    settings = settings.model_copy(update={"serve": settings.serve.model_copy(update={"vllm_startup_timeout_s": 3})})

    with pytest.raises(ModelUnavailable, match=r"did not answer /health within 3s .*serve.vllm_startup_timeout_s"):
        _run(load_once(settings, registry, first))
    log = next((settings.work_path / "serve" / "vllm").glob("vllm-*.log"))
    worker = int(log.read_text().split("engine core pid ")[1].split()[0])
    assert _ended_within(worker, seconds=10)


def _ended_within(pid: int, seconds: float) -> bool:
    """Whether ``pid`` is gone (or a zombie nobody reaped) within ``seconds``: a SIGKILL is sent at
    once but takes effect when the process is next scheduled, which a loaded machine delays."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if "zombie" in Path(f"/proc/{pid}/status").read_text().lower():
                return True
        except FileNotFoundError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_protocol_stand_in_requires_the_key_vllm_was_given(tmp_path):
    """The stand-in enforces VLLM_API_KEY as vLLM does, so the engine's key is checked above."""
    import socket
    import subprocess

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, str(FAKE_VLLM), "serve", "base", "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "b",
         "--gpu-memory-utilization", "0.9", "--max-num-seqs", "4"],
        env={**os.environ, "VLLM_API_KEY": "right"}, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).raise_for_status()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer right"}).status_code == 200
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
