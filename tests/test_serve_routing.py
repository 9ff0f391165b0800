"""`fragua serve` following the registry: deploys and rollbacks under load without a failed
request, the canary's share of production's traffic, and the deploy flow's check that the server
loads and answers with the new version (else the alias goes back)."""

from __future__ import annotations

import collections
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from fragua.registry import open_registry

from .conftest import QUICK, make_settings
from .apiserver import ServeServer

TOKEN = "routing-test-token"
QUESTION = [{"role": "user", "content": "Is breakfast included?"}]


@pytest.fixture
def served_work(published_work, tmp_path):
    template, versions = published_work
    work = tmp_path / "work"
    shutil.copytree(template, work)
    servers: list[ServeServer] = []

    def start(**env: str) -> ServeServer:
        server = ServeServer(work, TOKEN, env=env)
        servers.append(server)
        server.start()
        return server

    yield work, versions, start
    for server in servers:
        server.stop()


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow(seconds=120)
def test_deploy_and_rollback_under_load_fail_no_request(served_work):
    """16 clients keep asking for production while it moves to v2 and back: every request is
    answered, and the version in the answers follows the moves."""
    work, (v1, v2), start = served_work
    server = start()
    registry = open_registry(make_settings(work, **QUICK))
    answered: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def client_loop() -> None:
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=120) as client:
            while not stop.is_set():
                try:
                    raw = client.chat.completions.with_raw_response.create(model="production", messages=QUESTION, max_tokens=2)
                    answer = raw.parse()
                    assert raw.headers["x-fragua-version"] == answer.model
                    answered.append(answer.model)
                except Exception as exc:  # every failure is collected and fails the test below
                    failures.append(repr(exc))

    with ThreadPoolExecutor(16) as pool:
        clients = [pool.submit(client_loop) for _ in range(16)]
        try:
            wait_for(lambda: len(answered) >= 32, "answers before the deploy")
            registry.promote(v2, reason="deploy under load")
            wait_for(lambda: answered[-16:].count(v2) == 16, f"answers by {v2}")
            registry.rollback()
            seen = len(answered)
            wait_for(lambda: len(answered) > seen + 16 and answered[-16:].count(v1) == 16, f"answers by {v1} again")
        finally:
            stop.set()
        for done in clients:
            done.result()
    assert failures == [], failures[:5]
    first_v2, last_v2 = answered.index(v2), len(answered) - 1 - answered[::-1].index(v2)
    assert set(answered[:first_v2]) == {v1} and answered[-1] == v1 and first_v2 < last_v2
    reloaded = httpx.post(f"{server.url}/admin/reload", headers=server.headers, timeout=60).json()
    assert reloaded["routes"]["production"] == v1 and reloaded["pending"] == {}


@pytest.mark.slow(seconds=300)
def test_a_canary_takes_its_share_of_production_sticky_per_user(served_work):
    work, (v1, v2), start = served_work
    server = start()
    registry = open_registry(make_settings(work, **QUICK))
    registry.set_alias("canary", v2, reason="canary at 10%", traffic_percent=10)
    ready = httpx.post(f"{server.url}/admin/reload", headers=server.headers, timeout=120).json()
    assert ready["routes"]["canary"] == v2 and ready["canary_percent"] == 10

    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120, limits=httpx.Limits(max_connections=16)) as http:

        def ask(user: str | None, model: str = "production") -> str:
            body = {"model": model, "messages": QUESTION, "max_tokens": 1, **({"user": user} if user else {})}
            response = http.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            return response.headers["x-fragua-version"]

        with ThreadPoolExecutor(16) as pool:
            counts = collections.Counter(pool.map(ask, [None] * 1000))
            assert set(counts) == {v1, v2} and 70 <= counts[v2] <= 130, counts
            users = [f"user-{i}" for i in range(40)]
            first = dict(zip(users, pool.map(ask, users), strict=True))
            again = dict(zip(users, pool.map(ask, users), strict=True))
        assert first == again  # each user stays on one version
        assert set(first.values()) <= {v1, v2}
        for model, expected in (("canary", v2), (v1, v1)):  # naming the canary or a version is not split
            assert {ask(None, model) for _ in range(10)} == {expected}


@pytest.mark.slow(seconds=150)
def test_a_deploy_checks_the_server_and_is_undone_when_it_cannot_serve_the_version(prefect_api, served_work):
    from fragua.flows.deploy import deploy_flow

    work, (v1, v2), start = served_work
    server = start()
    settings = make_settings(work, **QUICK, serve={"server_url": server.url, "api_key": TOKEN})
    registry = open_registry(settings)

    outcome = deploy_flow(settings, version=v2)
    assert outcome.promoted and registry.production().version == v2
    routes = httpx.get(f"{server.url}/ready", timeout=30).json()["routes"]
    assert routes["production"] == v2  # switched by the deploy's reload, not by waiting for the watcher

    # A version whose files are intact but whose base model is gone: the registry accepts the move,
    # the server cannot load it, so the deploy's confirmation fails and production goes back.
    broken = registry.allocate("tiny")
    folder = registry.fetch(v1)
    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"}
    registry.publish(broken, files, {"lineage": {"base_model": str(work / "gone-base"), "base_model_id": "sha256:" + "0" * 64}})
    state = deploy_flow(settings, version=broken, return_state=True)
    assert state.is_failed()
    assert registry.production().version == v2
    assert "cannot be loaded" in str(state.result(raise_on_failure=False))
    answer = httpx.post(f"{server.url}/v1/chat/completions", headers=server.headers, timeout=120,
                        json={"model": "production", "messages": QUESTION, "max_tokens": 2})
    assert answer.status_code == 200 and answer.headers["x-fragua-version"] == v2

    # Without a server that answers, the check fails too: the alias never stays on a version nobody serves.
    server.stop()
    state = deploy_flow(settings, version=v1, return_state=True)
    assert state.is_failed() and registry.production().version == v2
    assert "cannot reach the server" in str(state.result(raise_on_failure=False))
