"""What a command costs besides its work: no heavy import where nothing uses it, and a Prefect
server started once (`fragua server start`) instead of a temporary one per command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from .conftest import EXAMPLES

HEAVY = ("torch", "transformers", "datasets", "wandb", "matplotlib", "peft", "prefect")

# The command runs in-process as the console script would run it, then reports what it imported.
IMPORTS_SCRIPT = f"""
import sys
from fragua.cli import app
try:
    app(sys.argv[1:], prog_name="fragua")
except SystemExit as exit_:
    code = exit_.code
print("IMPORTED " + ",".join(m for m in {HEAVY!r} if m in sys.modules))
sys.exit(code)
"""


def _environment(tmp_path) -> dict[str, str]:
    """No Prefect server named: commands find one only through `fragua server start`'s state file under this HOME."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    return env | {"HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                  "COLUMNS": "200"}


def fragua(*args: str, env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "fragua.cli", *args], capture_output=True, text=True, timeout=600, env=env, check=False)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("args", [["--help"], ["status"], ["versions"], ["version"], ["server", "status"]], ids=" ".join)
def test_commands_that_run_no_flow_import_no_heavy_library(args, tmp_path):
    done = subprocess.run([sys.executable, "-c", IMPORTS_SCRIPT, "--work-dir", str(tmp_path / "work"), *args], capture_output=True, text=True,
                          timeout=300, env=_environment(tmp_path), check=False)
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    (imported,) = re.findall(r"^IMPORTED (.*)$", done.stdout, re.MULTILINE)
    assert imported == "", f"`fragua {' '.join(args)}` imported {imported}"


def test_importing_the_flows_imports_no_machine_learning_library():
    # A flow run starts (and its server records it) before the training or validation code loads them.
    script = ("import sys, importlib\n"
              "for name in ('train', 'pipeline', 'validate', 'deploy', 'ingest', 'autotrain', 'hpo', 'expand', 'eval_batch'):\n"
              "    importlib.import_module('fragua.flows.' + name)\n"
              f"print(','.join(m for m in {HEAVY[:-1]!r} if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip() == "", done.stdout


def _flow_run_names(api_url: str) -> list[str]:
    response = httpx.post(f"{api_url}/flow_runs/filter", json={}, timeout=30)
    response.raise_for_status()
    return [run["name"] for run in response.json()]


@pytest.mark.slow(seconds=120)
def test_a_started_server_is_used_by_later_commands_until_it_is_stopped(tmp_path):
    env = _environment(tmp_path)
    state_file = tmp_path / "home" / ".fragua" / "prefect-server" / "state.json"
    try:
        code, output = fragua("server", "start", "--port", "0", "--no-ui", env=env)
        assert code == 0, output
        (api_url,) = set(re.findall(r"http://127\.0\.0\.1:\d+/api", output))
        state = json.loads(state_file.read_text())
        assert state["api_url"] == api_url and psutil.pid_exists(state["pid"])

        code, output = fragua("server", "start", "--port", "0", "--no-ui", env=env)
        assert code == 0 and "already running" in output and api_url in output, output
        code, output = fragua("server", "status", env=env)
        assert code == 0 and "answering" in output and api_url in output, output

        # A flow command without PREFECT_API_URL reports to that server instead of starting a temporary one.
        code, output = fragua("--work-dir", str(tmp_path / "work"), "ingest", "--source", str(EXAMPLES / "batch1"),
                              env=env | {"PREFECT_LOGGING_LEVEL": "INFO"})
        assert code == 0, output
        assert "temporary server" not in output, output
        assert "ingest-batch1" in _flow_run_names(api_url)
    finally:
        code, output = fragua("server", "stop", env=env)
    assert code == 0 and "stopped the Prefect server" in output, output
    deadline = time.monotonic() + 60
    while psutil.pid_exists(state["pid"]) and psutil.Process(state["pid"]).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the server outlived `fragua server stop`"
        time.sleep(0.5)
    assert not state_file.exists()
    code, output = fragua("server", "status", env=env)
    assert code == 1 and "no Prefect server started by Fragua is running" in output, output
    code, output = fragua("server", "stop", env=env)
    assert code == 0 and "no Prefect server started by Fragua is running" in output, output


def test_a_busy_port_is_one_clear_error(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = fragua("server", "start", "--port", str(port), "--no-ui", env=_environment(tmp_path))
    assert code == 1 and f"error: port {port} on 127.0.0.1 is in use" in output and "Traceback" not in output, output
    assert not (tmp_path / "home" / ".fragua" / "prefect-server" / "state.json").exists()
