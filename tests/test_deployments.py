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
    # Module-style entrypoints of the installed package (fragua.flows.X is the repository's flows/X.py):
    # the flows import each other relatively, which a file path cannot.
    module_name, name = entrypoint.split(":")
    assert module_name.startswith("fragua.flows."), entrypoint
    spec = importlib.util.find_spec(module_name)
    assert spec is not None and Path(spec.origin).resolve() == ROOT / "flows" / (module_name.removeprefix("fragua.flows.") + ".py")
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
    assert {"pipeline_flow", "ingest_flow", "expand_flow", "train_flow", "validate_flow", "deploy_flow", "rollback_flow", "hpo_flow", "autotrain_flow"} <= entrypoints


def test_schedules_are_well_formed():
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    for deployment in DEPLOYMENTS:
        for schedule in deployment.get("schedules", []):
            if "cron" in schedule:
                CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
            else:
                IntervalSchedule(interval=schedule["interval"], timezone=schedule.get("timezone"))


def test_autotrain_checks_hourly_and_trains_from_ten_examples(monkeypatch):
    hourly = next(d for d in DEPLOYMENTS if d["entrypoint"] == "fragua.flows.autotrain:autotrain_flow" and d["name"] == "hourly")
    [schedule] = hourly["schedules"]
    assert schedule["interval"] == 3600 and schedule.get("active", True)
    for name, value in hourly["work_pool"]["job_variables"]["env"].items():
        monkeypatch.setenv(name, value)
    assert Settings.load(**hourly["parameters"]["settings"]).intake.min_new_examples == 10
    assert hourly["parameters"]["force"] is False
    nightly = next(d for d in DEPLOYMENTS if d["name"] == "nightly")
    assert nightly["schedules"][0]["active"] is False  # the pipeline's cron is optional: off until enabled


def test_force_deployment_setting_names_a_deployment():
    names = {f"{load_flow(d['entrypoint']).name}/{d['name']}" for d in DEPLOYMENTS}
    assert Settings().intake.force_deployment in names
