"""Every deployment in prefect.yaml points at a real flow and carries valid Settings."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path

import pytest
import yaml

from fragua.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]


def load_flow(entrypoint: str):
    path, name = entrypoint.split(":")
    module_name = path.removesuffix(".py").replace("/", ".")
    spec = importlib.util.find_spec(module_name)
    assert spec is not None and Path(spec.origin) == ROOT / path
    return getattr(importlib.import_module(module_name), name)



@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: f"{d['entrypoint']}-{d['name']}")
def test_deployment_parameters_validate_against_settings(deployment, monkeypatch):
    flow = load_flow(deployment["entrypoint"])
    signature = inspect.signature(flow.fn)
    parameters = deployment.get("parameters", {})
    assert set(parameters) <= set(signature.parameters), f"unknown parameters {set(parameters) - set(signature.parameters)}"
    env = deployment["work_pool"].get("job_variables", {}).get("env", {})
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.load(**parameters.get("settings", {}))
    assert isinstance(settings, Settings)
    flow.validate_parameters(parameters)


def test_every_flow_has_a_deployment():
    entrypoints = {d["entrypoint"].split(":")[1] for d in DEPLOYMENTS}
    assert {"pipeline_flow", "ingest_flow", "expand_flow", "train_flow", "validate_flow", "deploy_flow", "rollback_flow", "hpo_flow"} <= entrypoints


def test_schedules_are_well_formed():
    from prefect.client.schemas.schedules import CronSchedule

    for deployment in DEPLOYMENTS:
        for schedule in deployment.get("schedules", []):
            CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
