"""A real Prefect server for the tests: ``prefect server start`` on 127.0.0.1, a free port,
its own ``PREFECT_HOME`` (and so its own SQLite database), stopped by ``stop()``.

The suite starts one for the whole run (``tests/conftest.py``) and hands its
``PREFECT_API_URL`` to every process that runs flows, so no flow run waits on a temporary
server starting within Prefect's start-up timeout on a loaded machine.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import httpx

# The whole server (database migrations included) comes up in 5-15 s on a quiet 2-core
# machine; this bound only stops a broken server from hanging the suite.
STARTUP_TIMEOUT = 300.0


# What no test relies on: loop services that poll the database every few seconds, and the
# event persister (every state change is an event; no test reads events back).
IDLE_SERVICES = ("SCHEDULER", "LATE_RUNS", "FOREMAN", "CANCELLATION_CLEANUP", "PAUSE_EXPIRATIONS", "REPOSSESSOR", "CLEANUP_RECONCILER", "TRIGGERS",
                 "EVENT_PERSISTER")

# Below Linux's ephemeral range (32768-60999): the port is chosen seconds before the server
# binds it, and no outgoing connection of another process can take it in between.
SERVER_PORTS = range(20000, 32000)


def free_port() -> int:
    """A port in SERVER_PORTS that nothing listens on now."""
    for port in random.sample(SERVER_PORTS, 50):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {SERVER_PORTS}")


def wait_until_healthy(api_url: str, timeout: float = STARTUP_TIMEOUT, alive: Callable[[], bool] = lambda: True) -> None:
    """Return once the Prefect API at ``api_url`` answers its health check."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{api_url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if not alive():
            raise RuntimeError(f"the Prefect server for {api_url} exited before it answered")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Prefect server for {api_url} did not answer within {timeout:.0f} s")
        time.sleep(0.25)


class PrefectServer:
    def __init__(self, home: Path, port: int | None = None) -> None:
        self.home = home
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment (``base``, default os.environ) whose Prefect client talks to this server."""
        return {**(os.environ if base is None else base), "PREFECT_API_URL": self.api_url}

    def launch(self) -> None:
        """Start the server process; ``wait_until_healthy`` waits for it to answer."""
        self.home.mkdir(parents=True, exist_ok=True)
        env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(self.home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING")
        # Only what records runs and states (task_run_recorder) keeps running.
        env.update({f"PREFECT_SERVER_SERVICES_{service}_ENABLED": "false" for service in IDLE_SERVICES})
        prefect = Path(sys.executable).with_name("prefect")
        command = [str(prefect)] if prefect.is_file() else [sys.executable, "-m", "prefect"]
        with self.log_file.open("wb") as log:
            # Its own session: stop() ends the server and the processes it starts, nothing else.
            self.process = subprocess.Popen(
                [*command, "server", "start", "--host", "127.0.0.1", "--port", str(self.port), "--no-ui", "--analytics-off"],
                cwd=self.home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        self.launch()
        try:
            wait_until_healthy(self.api_url, timeout, alive=lambda: self.process is not None and self.process.poll() is None)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}:\n{self.log_file.read_text()[-4000:]}") from None

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


if __name__ == "__main__":
    # For a child that cannot reach the suite's server (a test in its own network namespace):
    # `python -m tests.prefect_server HOME -- COMMAND...` runs COMMAND against a server of its own.
    home, _, command = sys.argv[1], sys.argv[2], sys.argv[3:]
    server = PrefectServer(Path(home))
    server.start()
    try:
        code = subprocess.run(command, env=server.client_env()).returncode
    finally:
        server.stop()
    sys.exit(code)
