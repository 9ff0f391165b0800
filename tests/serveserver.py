"""`fragua serve` as a real uvicorn server process on 127.0.0.1, for the serving tests."""

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


class ServeServer:
    """`fragua serve` in a subprocess on a free port; ``start`` returns once /ready says the
    default model is loaded, ``stop`` sends SIGTERM."""

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

    def start(self, timeout: float = 180.0) -> None:
        env = {**os.environ, "FRAGUA_TRACKING__MODE": "disabled", "FRAGUA_SERVE__WATCH_INTERVAL_S": "0.5", **self.extra_env}
        if self.token:
            env["FRAGUA_SERVE__API_KEY"] = self.token
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fragua.cli", "--work-dir", str(self.work_dir), "serve", "--host", "127.0.0.1", "--port", "0"],
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
                raise RuntimeError("the server did not start:\n" + "".join(self.output))
        while httpx.get(f"{self.url}/ready", timeout=30).status_code != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server never became ready:\n" + "".join(self.output))
            time.sleep(0.2)

    def log(self) -> str:
        return "".join(self.output)

    def stop(self) -> int | None:
        """SIGTERM, then the exit code (killed after 60 s)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
