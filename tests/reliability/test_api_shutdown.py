"""`fragua serve-api` stopped with SIGTERM after a forced training that started Prefect's temporary
server (no PREFECT_API_URL): the server and every other child process end with it."""

from __future__ import annotations

import json
import signal
import time

import httpx
import psutil
import pytest

from ..apiserver import ApiServer

TOKEN = "shutdown-token-1414"


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _temporary_server(api: psutil.Process) -> list[psutil.Process]:
    """The API process's children once one of them is Prefect's temporary server, else none."""
    children = api.children(recursive=True)
    return children if any("prefect.server.api.server:create_app" in _command(c) for c in children) else []


def _command(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # ended meanwhile
        return ""


@pytest.mark.slow(seconds=90)
@pytest.mark.parametrize("when", ["after-the-run", "while-it-runs"])
def test_sigterm_after_a_forced_training_stops_the_temporary_prefect_server(tmp_path, monkeypatch, when):
    """SIGTERM once the forced run has failed (the temporary server idle), or as soon as the
    run has started the temporary server (still starting, or the run under way)."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # the suite's server: without it the run starts a temporary one
    server = ApiServer(tmp_path / "work", TOKEN, env={
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        # the run fails at ingest, quickly, after the temporary server is up
        "FRAGUA_DATA__SOURCES": json.dumps([{"path": str(tmp_path / "missing.jsonl")}]),
    })
    server.start()
    assert server.process is not None
    api = psutil.Process(server.process.pid)
    children: list[psutil.Process] = []
    try:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as http:
            assert http.post("/examples", json={"question": "Sauna?", "answer": "Floor 3."}).status_code == 201
            assert http.post("/training/force").json()["mode"] == "in-process"
            deadline = time.monotonic() + 600
            while not (children := _temporary_server(api)) or (
                when == "after-the-run" and (http.get("/stats").json()["last_run"] or {}).get("state") in (None, "running")
            ):
                assert time.monotonic() < deadline, "".join(server.output)
                time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=120)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not [_command(c) for c in alive if _alive(c)], "".join(server.output)
        assert code == 128 + signal.SIGTERM  # the exit status says it was stopped by SIGTERM
    finally:
        server.kill()
        for child in children:  # a failed run must not leave them behind either
            if _alive(child):
                child.kill()
