"""The Prefect API a command's flow runs report to: the server named by PREFECT_API_URL, else the
server ``fragua server start`` left running for this user, else the temporary one Prefect starts
for the run (several seconds of every command: a server process, its database, its app).

``fragua server start`` runs ``prefect server start`` on 127.0.0.1 in its own session (it
outlives the command), with its log and a small state file (pid, start time, API URL) in
``~/.fragua/prefect-server/``; commands find it there while it answers its health check, and
``fragua server stop`` ends it. The start time guards against a recycled pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

# Prefect waits 20 s for its temporary server; a loaded 2-core machine can need longer
# (database migrations and the app's import run in a fresh process). Waiting longer costs
# nothing when it starts sooner.
TEMPORARY_SERVER_STARTUP_SECONDS = 180
_PREFECT_TIMEOUT_MESSAGE = "Timed out while attempting to connect to ephemeral Prefect API server"
DEFAULT_PORT = 4200
STOP_SECONDS = 30


class PrefectServerError(Exception):
    """A Prefect server did not come up or cannot be started; the message says what to do."""


@dataclass(frozen=True)
class LocalServer:
    """A Prefect server ``fragua server start`` started: its process, where it answers, its log."""

    pid: int
    started_at: float  # the process's creation time (psutil), which a recycled pid does not share
    api_url: str
    log: str

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


def server_folder() -> Path:
    """Where the state file and the log of the user's server live."""
    return Path.home() / ".fragua" / "prefect-server"


def _state_file() -> Path:
    return server_folder() / "state.json"


def _process(server: LocalServer):
    """The server's process while it runs, else None (gone, or the pid now belongs to another process)."""
    import psutil

    try:
        process = psutil.Process(server.pid)
        return process if abs(process.create_time() - server.started_at) < 1.0 and process.is_running() else None
    except psutil.Error:
        return None


def recorded_server() -> LocalServer | None:
    """The server the state file names, if its process still runs (a stale file is removed)."""
    path = _state_file()
    try:
        server = LocalServer(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if _process(server) is None:
        path.unlink(missing_ok=True)
        return None
    return server


def answers(api_url: str, timeout: float = 2.0) -> bool:
    """Whether the Prefect API at ``api_url`` answers its health check."""
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def running_server() -> LocalServer | None:
    """The user's server when it runs and answers; None otherwise."""
    server = recorded_server()
    return server if server is not None and answers(server.api_url) else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port_taken(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def start_server(port: int = DEFAULT_PORT, *, ui: bool = True, timeout: float = TEMPORARY_SERVER_STARTUP_SECONDS) -> tuple[LocalServer, bool]:
    """Start the user's Prefect server on 127.0.0.1:``port`` (0: a free port) and wait until it
    answers; returns it and whether it was started now (False: it was already running)."""
    import psutil

    running = recorded_server()
    if running is not None:
        if answers(running.api_url):
            return running, False
        raise PrefectServerError(
            f"the Prefect server started earlier (pid {running.pid}, {running.api_url}) runs but does not answer; "
            f"see {running.log}, or stop it with `fragua server stop`"
        )
    port = port or _free_port()
    if _port_taken(port):
        raise PrefectServerError(
            f"port {port} on 127.0.0.1 is in use (another Prefect server?); choose another with --port, "
            f"or set PREFECT_API_URL=http://127.0.0.1:{port}/api if it is a Prefect server you run"
        )
    folder = server_folder()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "server.log"
    prefect = Path(sys.executable).with_name("prefect")
    command = [str(prefect)] if prefect.is_file() else [sys.executable, "-m", "prefect"]
    command += ["server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off", *([] if ui else ["--no-ui"])]
    # The server serves this API; a PREFECT_API_URL in the caller's environment names another one.
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with log.open("ab") as output:
        # Its own session: it outlives this command, and stop_server ends it and what it started.
        process = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = LocalServer(pid=process.pid, started_at=psutil.Process(process.pid).create_time(), api_url=f"http://127.0.0.1:{port}/api", log=str(log))
    _state_file().write_text(json.dumps(asdict(server)))
    deadline = time.monotonic() + timeout
    while not answers(server.api_url):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_server()
            what = f"exited with code {process.returncode}" if process.returncode is not None else f"did not answer within {timeout:.0f} s"
            raise PrefectServerError(f"the Prefect server {what}; its log is {log}")
        time.sleep(0.25)
    return server, True


def stop_server() -> LocalServer | None:
    """Stop the user's server and what it started (SIGTERM, then SIGKILL after STOP_SECONDS); None when none runs."""
    import psutil

    server = recorded_server()
    if server is not None:
        process = _process(server)
        try:
            os.killpg(server.pid, signal.SIGTERM)
            if process is not None:
                process.wait(timeout=STOP_SECONDS)
        except ProcessLookupError:
            pass
        except psutil.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    _state_file().unlink(missing_ok=True)
    return server


@contextmanager
def command_prefect_api() -> Iterator[None]:
    """Run a command's flows against PREFECT_API_URL (environment or Prefect profile) when it is
    set, else against the server ``fragua server start`` left running, else with a temporary
    server (temporary_server_patience)."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if get_current_settings().api.url:
        yield
        return
    server = running_server()
    if server is not None:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield
        return
    with temporary_server_patience():
        yield


@contextmanager
def temporary_server_patience() -> Iterator[None]:
    """Run flows with a generous start-up timeout for the temporary server, unless a server
    is configured or the user chose the timeout (environment or Prefect profile); a server
    that still does not come up becomes one PrefectServerError instead of a traceback."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, get_current_settings, temporary_settings

    current = get_current_settings()
    chosen = "startup_timeout_seconds" in current.server.ephemeral.model_fields_set
    updates = {} if current.api.url or chosen else {PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: TEMPORARY_SERVER_STARTUP_SECONDS}
    with temporary_settings(updates=updates):
        timeout = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        try:
            yield
        except RuntimeError as exc:
            if _PREFECT_TIMEOUT_MESSAGE not in str(exc):
                raise
            raise PrefectServerError(
                f"the temporary Prefect server did not start within {timeout} s (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); "
                "start one with `fragua server start` (commands then use it) or name one in PREFECT_API_URL, "
                "or raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
            ) from exc
