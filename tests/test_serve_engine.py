"""The local serving engine on real registry versions of the tiny model: continuous batching gives
the answers `generate` gives, seeded sampling does not depend on batch neighbours, adapters share
their base weights, and limits, stop strings and cancellation behave."""

from __future__ import annotations

import asyncio

import pytest

from fragua.data.records import Message
from fragua.inference.generation import generate_answers
from fragua.registry import open_registry
from fragua.serve.batching import LocalEngine
from fragua.serve.engine import (
    Completion,
    Overloaded,
    Prompt,
    PromptTooLong,
    SamplingParams,
    TextDelta,
)
from fragua.serve.pool import tensor_bytes
from tests.conftest import QUICK, make_settings

pytestmark = pytest.mark.slow(seconds=60)


def question(i: int) -> list[Message]:
    return [Message(role="user", content=f"What is question {i}? " + "more words " * (i % 5))]


@pytest.fixture
def engine_for(published_work):
    engines = []

    def build(**serve) -> LocalEngine:
        settings = make_settings(published_work[0], **QUICK, serve=serve)
        engine = LocalEngine(settings, open_registry(settings))
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        asyncio.run(engine.close())


async def answer(engine: LocalEngine, version: str, prompt: Prompt, params: SamplingParams, delay: float = 0.0,
                 after: asyncio.Event | None = None, started: asyncio.Event | None = None) -> tuple[str, Completion]:
    """One request's streamed text and completion; it is sent after ``delay`` and once ``after`` is set,
    and sets ``started`` at its first event (so the next request can be sent while this one decodes)."""
    await asyncio.sleep(delay)
    if after is not None:
        await after.wait()
    streamed, done = [], None
    async for event in engine.generate(version, prompt, params):
        if started is not None:
            started.set()
        if isinstance(event, TextDelta):
            streamed.append(event.text)
        else:
            done = event
    assert done is not None
    return "".join(streamed), done


def test_requests_joining_a_running_batch_get_the_answers_generate_gives(engine_for, published_work):
    """16 greedy requests, each sent while the one before it decodes: each joins the
    running batch (its cache merged, left-padded) and ends with exactly `generate`'s answer."""
    version = published_work[1][0]
    engine = engine_for()

    async def scenario():
        # Each request is sent once the one before it streams: it joins a batch that is decoding,
        # however fast this machine decodes (fixed delays let a quiet machine finish each first).
        started = [asyncio.Event() for _ in range(16)]
        return await asyncio.gather(*[
            answer(engine, version, Prompt(messages=question(i)), SamplingParams(max_tokens=12 + i, temperature=0),
                   after=started[i - 1] if i else None, started=started[i])
            for i in range(16)
        ])

    results = asyncio.run(scenario())
    served = engine.pool.acquire(version)
    try:
        expected = [generate_answers(served.model, served.tokenizer, [question(i)], 12 + i, 1, served.context)[0] for i in range(16)]
    finally:
        engine.pool.release(served)
    assert [done.text.strip() for _, done in results] == expected
    assert all(streamed == done.text for streamed, done in results)  # the stream adds up to the answer
    stats = engine.stats()
    assert stats.decoded_rows / stats.steps > 2, "requests were decoded one at a time, not batched"


def test_a_seeded_request_answers_the_same_alone_and_among_others(engine_for, published_work):
    v1, v2 = published_work[1]
    engine = engine_for()
    params = SamplingParams(max_tokens=24, temperature=0.8, top_p=0.9, seed=7)
    prompt = Prompt(messages=question(3))

    async def scenario():
        alone = await answer(engine, v1, prompt, params)
        crowd = await asyncio.gather(
            *[answer(engine, v1 if i % 2 else v2, Prompt(messages=question(i)), SamplingParams(max_tokens=24, temperature=1.0)) for i in range(8)],
            answer(engine, v1, prompt, params, delay=0.05),
        )
        other_seed = await answer(engine, v1, prompt, SamplingParams(max_tokens=24, temperature=0.8, top_p=0.9, seed=8))
        return alone, crowd[-1], other_seed

    alone, among_others, other_seed = asyncio.run(scenario())
    assert alone[1].text == among_others[1].text
    assert other_seed[1].text != alone[1].text
    assert alone[1].completion_tokens == 24 and alone[1].finish_reason == "length"


def test_stop_strings_end_the_answer_before_them_and_are_never_streamed(engine_for, published_work):
    version = published_work[1][0]
    engine = engine_for()
    prompt = Prompt(messages=question(1))
    _, full = asyncio.run(answer(engine, version, prompt, SamplingParams(max_tokens=24, temperature=0)))
    stop = full.text[6:9]
    assert stop and stop in full.text
    streamed, stopped = asyncio.run(answer(engine, version, prompt, SamplingParams(max_tokens=24, temperature=0, stop=(stop,))))
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.index(stop)]
    assert streamed == stopped.text


def test_plain_text_prompts_and_usage_counts(engine_for, published_work):
    version = published_work[1][0]
    engine = engine_for()
    served = engine.pool.acquire(version)
    prompt_tokens = len(served.tokenizer("Once upon a time")["input_ids"])
    engine.pool.release(served)
    _, done = asyncio.run(answer(engine, version, Prompt(text="Once upon a time"), SamplingParams(max_tokens=5, temperature=0)))
    assert done.prompt_tokens == prompt_tokens
    assert 0 < done.completion_tokens <= 5


def test_prompts_beyond_the_limits_are_refused_with_the_numbers(engine_for, published_work):
    version = published_work[1][0]
    engine = engine_for(max_prompt_tokens=8)
    with pytest.raises(PromptTooLong, match="serve.max_prompt_tokens allows 8"):
        asyncio.run(answer(engine, version, Prompt(messages=question(4)), SamplingParams(max_tokens=4)))
    roomy = engine_for()
    with pytest.raises(PromptTooLong, match="context of 512 tokens"):
        asyncio.run(answer(roomy, version, Prompt(messages=question(4)), SamplingParams(max_tokens=510)))


def test_a_full_queue_refuses_new_requests_as_overloaded(engine_for, published_work):
    version = published_work[1][0]
    engine = engine_for(max_queued=1, max_batch_size=1)

    async def scenario():
        def busy(i: int) -> asyncio.Task:
            return asyncio.create_task(answer(engine, version, Prompt(messages=question(i)), SamplingParams(max_tokens=200, temperature=0)))

        async def until(condition) -> None:
            while not condition(engine.stats()):
                await asyncio.sleep(0.01)

        running = busy(0)
        await until(lambda stats: stats.running == 1)
        waiting = busy(1)
        await until(lambda stats: stats.waiting == 1)
        with pytest.raises(Overloaded, match="serve.max_queued"):
            await answer(engine, version, Prompt(messages=question(9)), SamplingParams(max_tokens=4))
        await asyncio.gather(running, waiting)  # the requests already taken finish

    asyncio.run(scenario())


def test_a_client_that_leaves_frees_its_batch_slot(engine_for, published_work):
    version = published_work[1][0]
    engine = engine_for()

    async def scenario():
        stream = engine.generate(version, Prompt(messages=question(2)), SamplingParams(max_tokens=400, temperature=1.0))
        await stream.__anext__()
        await stream.aclose()
        for _ in range(500):
            if engine.stats().running == 0:
                return True
            await asyncio.sleep(0.01)
        return False

    assert asyncio.run(scenario())


def test_adapter_versions_share_one_copy_of_the_base_and_idle_ones_are_unloaded_beyond_the_budget(engine_for, published_work):
    v1, v2 = published_work[1]
    engine = engine_for()
    asyncio.run(engine.load(v1))
    one = engine.pool.used_bytes()
    asyncio.run(engine.load(v2))
    both = engine.pool.used_bytes()
    first, second = engine.pool.acquire(v1), engine.pool.acquire(v2)
    try:
        base_bytes = tensor_bytes(first.model.get_base_model().parameters()) - first.own_bytes
        assert both - one == second.own_bytes < base_bytes / 2  # the second version added its adapter only
        shared = {p.data_ptr() for p in first.model.parameters()} & {p.data_ptr() for p in second.model.parameters()}
        assert shared, "the two versions do not share base weights"
    finally:
        engine.pool.release(first)
        engine.pool.release(second)

    tight = engine_for(memory_budget_mb=1)  # under one version: only the newest stays
    asyncio.run(tight.load(v1))
    asyncio.run(tight.load(v2))
    assert tight.pool.loaded() == [v2]
