"""`fragua serve` as operators run it: the API key from a Prefect Secret block, and overload answered
with 429 and Retry-After while the requests already taken finish."""

from __future__ import annotations

import asyncio
import shutil
import signal

import httpx
import pytest

from .apiserver import ServeServer

pytestmark = pytest.mark.slow(seconds=60)

QUESTION = [{"role": "user", "content": "Is breakfast included?"}]


@pytest.fixture
def serve_work(published_work, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(published_work[0], work)
    return work


def test_the_api_key_can_come_from_a_prefect_secret_block(serve_work, prefect_api):
    from prefect.blocks.system import Secret

    key = "sk-serve-from-a-secret-block"
    Secret(value=key).save("fragua-serve-key", overwrite=True)
    server = ServeServer(serve_work, None, env={"FRAGUA_SERVE__API_KEY_BLOCK": "secret/fragua-serve-key"})
    server.start()
    try:
        body = {"model": "production", "messages": QUESTION, "max_tokens": 2}
        allowed = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        refused = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    finally:
        assert server.stop() == 128 + signal.SIGTERM
    assert allowed.status_code == 200 and refused.status_code == 401
    assert key not in server.log()


def test_overload_is_a_429_with_retry_after_and_the_taken_requests_finish(serve_work):
    server = ServeServer(serve_work, None, env={"FRAGUA_SERVE__MAX_BATCH_SIZE": "1", "FRAGUA_SERVE__MAX_QUEUED": "1"})
    server.start()

    async def crowd() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:
            body = {"model": "production", "messages": QUESTION, "max_tokens": 200, "temperature": 1.0}
            return await asyncio.gather(*[http.post("/v1/chat/completions", json=body) for _ in range(6)])

    try:
        answers = asyncio.run(crowd())
    finally:
        server.stop()
    refused = [r for r in answers if r.status_code == 429]
    assert refused, [r.status_code for r in answers]
    assert all(r.status_code in (200, 429) for r in answers)
    assert any(r.status_code == 200 for r in answers)
    error = refused[0].json()["error"]
    assert error["code"] == "overloaded" and error["type"] == "rate_limit_error" and "serve.max_queued" in error["message"]
    assert refused[0].headers["retry-after"] == "1"
