"""Helpers for the reliability suite: the real ``fragua`` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The console script pip installed next to this interpreter: what a user types.
_SCRIPT = Path(sys.executable).with_name("fragua")
FRAGUA = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "fragua.cli"]


@pytest.fixture
def fragua_cli(prefect_api):
    """Run ``fragua ARGS`` as a user would, in its own process; it talks to the session's
    temporary Prefect API instead of starting one of its own. Returns (exit code, output)."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "200", "TOKENIZERS_PARALLELISM": "false"}

    def run(*args: str, work_dir: Path, timeout: float = 300, extra_env: dict[str, str] | None = None) -> tuple[int, str]:
        done = subprocess.run([*FRAGUA, "--work-dir", str(work_dir), *args], env={**env, **(extra_env or {})},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        return done.returncode, done.stdout

    return run
