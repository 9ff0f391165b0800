"""The deployments for real: a Prefect server, the process pool, `prefect deploy --all`,
`prefect deployment run`, a worker that runs the flow once, and the version it published."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fragua.registry import open_registry
from fragua.settings import Settings

from .conftest import EXAMPLES

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def prefect(*args: str, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run([str(BIN / "prefect"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def prefect_server(prefect_api, tmp_path):
    """The environment of a Prefect CLI talking to the suite's server, with nothing else of ours."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "FRAGUA_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=prefect_api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING", TOKENIZERS_PARALLELISM="false",
    )
    return env


@pytest.mark.slow(seconds=80)
def test_deploy_all_run_pipeline_with_a_worker(prefect_server, tiny_base, tmp_path):
    env = prefect_server
    work = tmp_path / "work"
    prefect("work-pool", "create", "fragua-process", "--type", "process", env=env)
    deployed = prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml", env=env)
    for name in ("pipeline/nightly", "pipeline/on-demand", "autotrain/hourly", "autotrain/on-demand", "hpo/default", "rollback/default"):
        assert name in deployed, deployed

    settings = {
        "work_dir": str(work), "data": {"sources": [{"path": str(EXAMPLES / "batch1")}]},
        "train": {"max_steps": 2, "base_model": str(tiny_base)}, "tracking": {"mode": "disabled"},
        "validate": {"max_examples": 4, "min_score": 0.0, "require_beat_base": False, "max_new_tokens": 8},
        "registry": {"auto_deploy": True},
    }
    started = prefect("deployment", "run", "pipeline/on-demand", "--param", f"settings={json.dumps(settings)}", env=env)
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started).group(1)

    # Anything else the worker picks up (a scheduled autotrain) stays out of the repository.
    worker_env = {**env, "FRAGUA_WORK_DIR": str(tmp_path / "scheduled-work")}
    prefect("worker", "start", "--pool", "fragua-process", "--run-once", env=worker_env, timeout=600)

    run = httpx.get(f"{env['PREFECT_API_URL']}/flow_runs/{flow_run_id}", timeout=10).json()
    assert run["state"]["type"] == "COMPLETED", run["state"]
    # What the UI's run list and run page show: the outcome, not only a green Completed.
    assert (run["name"], run["state"]["name"]) == ("pipeline-batch1", "Promoted"), run["state"]
    assert run["state"]["message"] == "fragua-tiny-v1 promoted to production (was unset)"
    assert {"model:fragua", "version:fragua-tiny-v1"} <= set(run["tags"])
    artifacts = httpx.post(f"{env['PREFECT_API_URL']}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}, timeout=10).json()
    assert [a["key"] for a in artifacts] == ["pipeline"] and artifacts[0]["data"].startswith("# Pipeline: Promoted")
    registry = open_registry(Settings(work_dir=work))
    assert [m.version for m in registry.versions()] == ["fragua-tiny-v1"]
    assert registry.alias("production")[0].version == "fragua-tiny-v1"
    # The version records the deploy subflow of this run, on this server.
    deploy_run = httpx.get(f"{env['PREFECT_API_URL']}/flow_runs/{registry.manifest('fragua-tiny-v1').lineage['prefect_flow_run_id']}", timeout=10).json()
    assert deploy_run["state"]["type"] == "COMPLETED" and deploy_run["parent_task_run_id"] is not None
