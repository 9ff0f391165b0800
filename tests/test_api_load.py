"""Minimum bar: 2,000 examples from 20 concurrent clients, with retries, against a real server,
whose queue is SQLite and then PostgreSQL."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from fragua.intake.queue import IntakeQueue

from .apiserver import ApiServer

CLIENTS = 20
EXAMPLES = 2_000
TOKEN = "load-test-token-3141"


@pytest.fixture
def api_server(queue_url, tmp_path):
    server = ApiServer(tmp_path / "work", TOKEN, env={"FRAGUA_INTAKE__DATABASE_URL": queue_url})
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
def test_two_thousand_examples_from_twenty_clients_with_retries(api_server, queue_url):
    statuses: list[int] = []

    def client(number: int) -> list[int]:
        seen = []
        rng = random.Random(number)
        with httpx.Client(base_url=api_server.url, headers=api_server.headers, timeout=60) as http:
            mine = range(number, EXAMPLES, CLIENTS)
            singles = [i for i in mine if i % 4]
            batched = [i for i in mine if not i % 4]
            for i in singles:
                body = {"question": f"Question {i}: what is {i} + {i}?", "answer": f"{2 * i}", "idempotency_key": f"load-{i}"}
                seen.append(http.post("/examples", json=body).status_code)
                if rng.random() < 0.2:  # a client that lost the response retries with the same key
                    seen.append(http.post("/examples", json=body).status_code)
            if not batched:
                return seen
            batch = {"examples": [{"question": f"Question {i}: what is {i} + {i}?", "answer": f"{2 * i}", "idempotency_key": f"load-{i}"} for i in batched]}
            seen.append(http.post("/examples/batch", json=batch).status_code)
            seen.append(http.post("/examples/batch", json=batch).status_code)  # the whole batch retried
        return seen

    with ThreadPoolExecutor(CLIENTS) as pool:
        for result in pool.map(client, range(CLIENTS)):
            statuses += result

    assert not [s for s in statuses if s >= 500], "server errors"
    assert set(statuses) <= {200, 201}, sorted(set(statuses))
    batching_clients = CLIENTS // 4  # the clients whose examples are all multiples of 4
    assert statuses.count(201) == EXAMPLES - EXAMPLES // 4 + batching_clients  # each single once, each first batch
    stats = httpx.get(f"{api_server.url}/stats", headers=api_server.headers, timeout=30).json()
    assert stats["examples"] == {"pending": EXAMPLES, "training": 0, "trained": 0, "duplicate": 0}
    queue = IntakeQueue(queue_url)
    stored = [e.idempotency_key for page in (queue.examples("pending", limit=EXAMPLES + 10),) for e in page]
    assert sorted(stored) == sorted(f"load-{i}" for i in range(EXAMPLES))
