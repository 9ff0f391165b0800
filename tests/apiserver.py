"""Fragua's HTTP servers as real uvicorn processes on 127.0.0.1: the intake API (`fragua
serve-api`) for load and crash tests, and `fragua serve` for the serving tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import httpx

READY = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


class CliServer:
    """A `fragua` server command in a subprocess on a free port (``--port 0``, read back from
    uvicorn's banner); ``start`` returns once ``ready`` says so, ``stop`` sends SIGTERM and
    returns the exit status, ``kill`` crashes it."""

    command = ""
    stop_timeout = 20.0

    def __init__(self, work_dir: Path, token: str | None, *, env: dict[str, str] | None = None) -> None:
        self.work_dir = work_dir
        self.token = token
        self.extra_env = env or {}
        self.process: subprocess.Popen[str] | None = None
        self.port: int | None = None
        self.output: deque[str] = deque(maxlen=300)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def environment(self) -> dict[str, str]:
        return {**os.environ, "FRAGUA_TRACKING__MODE": "disabled", **self.extra_env}

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/health", timeout=10).status_code == 200

    def start(self, timeout: float = 60.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fragua.cli", "--work-dir", str(self.work_dir), self.command, "--host", "127.0.0.1", "--port", "0"],
            env=self.environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        found = threading.Event()

        def pump() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                self.output.append(line)
                if not found.is_set() and (match := READY.search(line)):
                    self.port = int(match.group(1))
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"`fragua {self.command}` did not start:\n{self.log()}")
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"`fragua {self.command}` never became ready:\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        return "".join(self.output)

    def stop(self) -> int | None:
        """SIGTERM, then the exit status (killed after ``stop_timeout``)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class ApiServer(CliServer):
    """`fragua serve-api` (the intake API) with ``token`` as its bearer token."""

    command = "serve-api"

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "FRAGUA_INTAKE__API_TOKEN": self.token or ""}


class ServeServer(CliServer):
    """`fragua serve`, ready once /ready says the default model is loaded; the aliases are read
    every half second so moves show quickly."""

    command = "serve"
    stop_timeout = 60.0

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env = {**env, "FRAGUA_SERVE__WATCH_INTERVAL_S": "0.5", **self.extra_env}
        if self.token:
            env["FRAGUA_SERVE__API_KEY"] = self.token
        return env

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/ready", timeout=30).status_code == 200

    def start(self, timeout: float = 180.0) -> None:
        super().start(timeout)
