"""The intake API as a real uvicorn server process on 127.0.0.1, for load and crash tests."""

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


class ApiServer:
    """`fragua serve-api` in a subprocess on a free port; ``stop`` ends it, ``kill`` crashes it."""

    def __init__(self, work_dir: Path, token: str, *, env: dict[str, str] | None = None) -> None:
        self.work_dir = work_dir
        self.token = token
        self.extra_env = env or {}
        self.process: subprocess.Popen[str] | None = None
        self.port: int | None = None
        self.output: deque[str] = deque(maxlen=200)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, "FRAGUA_INTAKE__API_TOKEN": self.token, "FRAGUA_TRACKING__MODE": "disabled", **self.extra_env}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fragua.cli", "--work-dir", str(self.work_dir), "serve-api", "--host", "127.0.0.1", "--port", "0"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
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
                raise RuntimeError("the API server did not start:\n" + "".join(self.output))
        httpx.get(f"{self.url}/health", timeout=10).raise_for_status()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
