"""The vLLM engine on real vLLM: a trained tiny adapter version served by `vllm serve` with LoRA,
chat answers streamed, and an alias move loading the new version and unloading the old one.

Runs only where CUDA and the vllm package are present (pip install 'fragua[vllm]' on a GPU
machine); elsewhere it is skipped and tests/test_serve_vllm.py covers the engine against a
protocol stand-in."""

from __future__ import annotations

import asyncio

import pytest

from fragua.data.records import Message
from fragua.jobs.registry import publish_run
from fragua.registry import open_registry
from fragua.registry.downloads import MANIFEST
from fragua.serve.engine import Completion, Prompt, SamplingParams, TextDelta
from fragua.serve.vllm import VllmEngine, cuda_available, find_vllm
from fragua.settings import Settings

from .conftest import QUICK

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'fragua[vllm]')")
if not cuda_available():
    pytest.skip("vLLM needs an NVIDIA GPU with CUDA", allow_module_level=True)

pytestmark = [pytest.mark.gpu, pytest.mark.slow(seconds=300)]

QUESTION = Prompt(messages=[Message(role="user", content="What does a blacksmith work with?")])
GREEDY = SamplingParams(max_tokens=12, temperature=0, seed=0)


@pytest.fixture
def two_versions(validated_work, monkeypatch):
    """Settings for the vLLM engine and two published versions holding the same trained adapter."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # vLLM (a child process) loads the local tiny base only
    work, run_id = validated_work
    settings = Settings(work_dir=work, **QUICK, serve={
        "engine": "vllm", "vllm_max_loras": 1, "vllm_gpu_memory_utilization": 0.3, "vllm_startup_timeout_s": 900,
    })
    assert find_vllm(settings.serve), "the vllm package is importable but its `vllm` command is not beside Python or on PATH"
    registry = open_registry(settings)
    first = publish_run(settings, run_id)
    folder = registry.fetch(first.version)
    second = registry.allocate("tiny")
    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST}
    registry.publish(second, files, {"lineage": first.lineage})
    return settings, registry, first.version, second


async def _answer(engine: VllmEngine, version: str) -> tuple[str, Completion]:
    pieces, completion = [], None
    async for item in engine.generate(version, QUESTION, GREEDY):
        if isinstance(item, TextDelta):
            pieces.append(item.text)
        else:
            completion = item
    assert completion is not None
    return "".join(pieces), completion


def test_vllm_serves_adapter_versions_and_follows_an_alias_move(two_versions):
    settings, registry, first, second = two_versions

    async def scenario():
        engine = VllmEngine(settings, registry)
        try:
            registry.promote(first, reason="test")
            await engine.load(first)
            process = next(iter(engine._processes.values()))
            first_text, first_completion = await _answer(engine, first)
            registry.promote(second, reason="test: alias move")
            await engine.load(second)  # what `fragua serve` does when production moves
            models = [card["id"] for card in (await process.client.get("/v1/models")).json()["data"]]
            second_text, second_completion = await _answer(engine, second)
            return process, first_text, first_completion, second_text, second_completion, models, engine.stats()
        finally:
            await engine.close()

    process, first_text, first_completion, second_text, second_completion, models, stats = asyncio.run(scenario())
    assert first_completion.text == first_text and first_completion.finish_reason in ("stop", "length")
    assert first_completion.prompt_tokens > 5 and 1 <= first_completion.completion_tokens <= GREEDY.max_tokens
    # The same adapter weights under two names, greedy: the same answer.
    assert second_text == first_text and second_completion.completion_tokens == first_completion.completion_tokens
    assert models == ["fragua-base", second]  # one adapter slot: the old production version was unloaded
    assert stats.loaded == [second]
    assert process.process.poll() is not None  # close() ended vLLM
