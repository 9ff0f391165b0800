"""The intake queue under faults: the API process killed mid-load loses no acknowledged
example, and a pipeline whose validate step fails leaves production and the queue as they were."""

from __future__ import annotations

import random
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from fragua.flows.autotrain import forced_autotrain
from fragua.intake import api
from fragua.intake.queue import IntakeQueue, question_answer_record
from fragua.registry import open_registry
from fragua.registry.versions import PRODUCTION
from fragua.settings import Settings
from fragua.tasks import validate as validate_tasks

from ..apiserver import ApiServer
from ..conftest import QUICK

TOKEN = "crash-test-token-1618"
CLIENTS = 10
PER_CLIENT = 120


def body(i: int) -> dict:
    return {"question": f"Which locker holds parcel {i}?", "answer": f"Parcel {i} is in locker {i % 97}.", "idempotency_key": f"parcel-{i}"}


@pytest.mark.slow
def test_the_api_killed_mid_load_loses_no_acknowledged_example(tmp_path):
    """Clients post until the server is SIGKILLed; every 200/201 they got is in the database, and
    re-sending the unacknowledged ones after a restart stores each example exactly once."""
    work = tmp_path / "work"
    server = ApiServer(work, TOKEN)
    server.start()
    acknowledged: set[str] = set()
    unacknowledged: list[int] = []
    lock = threading.Lock()
    enough = threading.Event()

    def client(number: int) -> None:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=10) as http:
            for i in range(number, CLIENTS * PER_CLIENT, CLIENTS):
                try:
                    response = http.post("/examples", json=body(i))
                except httpx.TransportError:  # the server died before (or while) answering
                    with lock:
                        unacknowledged.append(i)
                    continue
                assert response.status_code in (200, 201), response.text
                with lock:
                    acknowledged.add(body(i)["idempotency_key"])
                    if len(acknowledged) >= CLIENTS * PER_CLIENT // 3:
                        enough.set()

    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client, n) for n in range(CLIENTS)]
            assert enough.wait(120), "the load never reached a third of the examples"
            server.kill()
            for future in futures:
                future.result()
    finally:
        server.kill()

    assert unacknowledged, "the kill came after the load finished: nothing was tested"
    stored = {e.idempotency_key for e in IntakeQueue.from_settings(Settings(work_dir=work)).examples(limit=10 * CLIENTS * PER_CLIENT)}
    assert acknowledged <= stored, f"{len(acknowledged - stored)} acknowledged examples lost"

    restarted = ApiServer(work, TOKEN)
    restarted.start()
    try:
        with httpx.Client(base_url=restarted.url, headers=restarted.headers, timeout=30) as http:
            statuses = [http.post("/examples", json=body(i)).status_code for i in sorted(unacknowledged)]
            stats = http.get("/stats").json()
    finally:
        restarted.stop()
    assert set(statuses) <= {200, 201}  # 200: the crash came after the commit, the retry is recognised
    assert stats["examples"]["pending"] == CLIENTS * PER_CLIENT
    keys = [e.idempotency_key for e in IntakeQueue.from_settings(Settings(work_dir=work)).examples(limit=10 * CLIENTS * PER_CLIENT)]
    assert sorted(keys) == sorted(body(i)["idempotency_key"] for i in range(CLIENTS * PER_CLIENT))


def test_tokens_are_compared_in_constant_time(tmp_path, monkeypatch):
    """Every request's token goes through hmac.compare_digest (no early-exit ==), right or wrong."""
    from fastapi.testclient import TestClient

    compared: list[tuple[bytes, bytes]] = []
    real = api.hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api.hmac, "compare_digest", spy)
    client = TestClient(api.create_app(Settings(work_dir=tmp_path / "work", intake={"api_token": TOKEN}), forced_autotrain))
    assert client.get("/examples/pending", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/examples/pending").status_code == 401
    assert client.get("/examples/pending", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert [b for _, b in compared] == [TOKEN.encode(), TOKEN.encode()]  # the missing header never reaches a comparison
    assert [a for a, _ in compared] == [b"wrong", TOKEN.encode()]


@pytest.mark.e2e
def test_a_failing_validate_step_leaves_production_and_the_intake_queue_as_they_were(prefect_api, validated_work, tmp_path, monkeypatch):
    from fragua.flows.autotrain import autotrain_flow
    from fragua.flows.deploy import deploy_flow

    template, run_id = validated_work
    work = tmp_path / "work"
    shutil.copytree(template, work)
    # v1 was trained from the template's base model; incremental training must continue from the same one
    base = template / "base" / "fragua-tiny"
    settings = Settings(work_dir=work, **{**QUICK, "train": {**QUICK["train"], "base_model": str(base)}})
    assert deploy_flow(settings, run_id).production == "fragua-tiny-v1"
    registry = open_registry(settings)
    before = (registry.alias(PRODUCTION), registry.history(), registry.store.list_keys(""))
    queue = IntakeQueue.from_settings(settings)
    rng = random.Random(0)
    for i in range(settings.intake.min_new_examples):
        queue.add(question_answer_record(f"What is the wifi password of room {i}?", f"Room {i}: fragua-{rng.randrange(10**6)}."), key=f"wifi-{i}")

    def evaluation_crashes(*args, **kwargs):
        raise RuntimeError("evaluation worker lost")

    monkeypatch.setattr(validate_tasks, "evaluate_model", evaluation_crashes)
    with pytest.raises(Exception, match="evaluation worker lost"):
        autotrain_flow(settings)

    assert (registry.alias(PRODUCTION), registry.history(), registry.store.list_keys("")) == before
    examples = queue.examples()
    assert len(examples) == settings.intake.min_new_examples
    assert {e.status for e in examples} == {"pending"} and {e.version for e in examples} == {None}
    assert all("evaluation worker lost" in e.last_error for e in examples)
    last = queue.last_run()
    assert (last.state, last.examples, last.version) == ("failed", settings.intake.min_new_examples, None)
    assert "evaluation worker lost" in last.message
