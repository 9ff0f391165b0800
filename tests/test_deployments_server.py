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


def prefect(*args: str, env: dict[str, str], timeout: float = 300, idempotent: bool = False) -> str:
    # The suite's server keeps every worker's runs in one SQLite file; under a full suite on two
    # cores a write can still find it busy after Prefect's own client retries (503). A command
    # that is safe to repeat (`deploy --all` upserts its deployments) is run again then.
    for _ in range(3 if idempotent else 1):
        done = subprocess.run([str(BIN / "prefect"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode == 0 or "503 Service Unavailable" not in done.stdout + done.stderr:
            break
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
    deployed = prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml", env=env, idempotent=True)
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


CANARY = "canary-secret-5d81e2"
ENV_CANARY = "canary-env-secret-93b7c4"


@pytest.mark.slow(seconds=90)
def test_a_custom_run_changes_only_what_it_sets_and_keeps_secrets_out(tmp_path, monkeypatch):
    """A server of its own, so its whole database can be searched for the secrets afterwards."""
    from .prefect_server import PrefectServer
    from .test_deployments import deep_merge, form_defaults

    server = PrefectServer(tmp_path / "server")
    server.start()
    try:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "FRAGUA_"))}
        env.update(
            PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=server.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="INFO", TOKENIZERS_PARALLELISM="false",
        )
        api = server.api_url
        prefect("work-pool", "create", "fragua-process", "--type", "process", env=env)
        prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml", env=env, idempotent=True)
        deployment = httpx.get(f"{api}/deployments/name/autotrain/hourly", timeout=10).json()
        # What the UI's Custom run sends for an untouched form: the deployment's parameters over the schema's defaults.
        form = deep_merge(form_defaults(deployment["parameter_openapi_schema"]), deployment["parameters"])

        def create(parameters: dict) -> httpx.Response:
            return httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run", json={"parameters": parameters}, timeout=30)

        with_secret = create(deep_merge(form, {"settings": {"tracking": {"api_key": CANARY}}}))
        assert with_secret.status_code == 409 and "'api_key' was unexpected" in with_secret.text and CANARY not in with_secret.text
        cli = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "autotrain/hourly", "--param", json.dumps({"tracking": {"api_key": CANARY}}).join(["settings=", ""])],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert cli.returncode != 0 and "api_key" in cli.stdout + cli.stderr
        untouched = create(form)
        too_long = create(deep_merge(form, {"settings": {"validate": {"max_new_tokens": 300}}}))
        assert untouched.status_code == too_long.status_code == 201, (untouched.text, too_long.text)

        work = tmp_path / "worker-work"
        worker_env = {**env, "FRAGUA_WORK_DIR": str(work), "FRAGUA_TRACKING__API_KEY": ENV_CANARY}
        worker_output = prefect("worker", "start", "--pool", "fragua-process", "--run-once", env=worker_env, timeout=600)

        done = httpx.get(f"{api}/flow_runs/{untouched.json()['id']}", timeout=10).json()
        assert done["state"]["type"] == "COMPLETED", done["state"]
        assert (work / "intake.db").is_file()  # the worker's FRAGUA_WORK_DIR, not the schema's old default ".fragua"
        for name, value in {**deployment["job_variables"]["env"], "FRAGUA_WORK_DIR": str(work)}.items():
            monkeypatch.setenv(name, value)
        stored = done["parameters"]["settings"]
        effective = Settings.load(**stored)
        assert effective.work_dir == work
        assert (effective.train.batch_size, effective.validate.min_score) == (8, 0.1)  # the development profile's, not the defaults
        assert effective.intake.min_new_examples == 10 and effective.registry.auto_deploy  # the deployment's own parameters

        failed = httpx.get(f"{api}/flow_runs/{too_long.json()['id']}", timeout=10).json()
        assert failed["state"]["type"] == "FAILED"
        assert "validate.max_new_tokens (300) must be below train.max_seq_length (256)" in failed["state"]["message"]
        assert "Traceback" not in worker_output

        logs = httpx.post(f"{api}/logs/filter", json={}, timeout=30).text
        assert "Traceback" not in logs

        runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=30).text
        database = b"".join(path.read_bytes() for path in server.home.rglob("*") if path.is_file())
        for secret in (CANARY, ENV_CANARY):
            assert secret not in worker_output + logs + runs + cli.stdout + cli.stderr
            assert secret.encode() not in database
    finally:
        server.stop()
