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
    assert {"pipeline_flow", "ingest_flow", "expand_flow", "train_flow", "validate_flow", "deploy_flow", "rollback_flow", "hpo_flow", "autotrain_flow",
            "canary_flow", "promote_flow"} <= entrypoints


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


CANARY = "canary-secret-7f3a9c"


def form_defaults(schema: dict, node: dict | None = None) -> dict:
    """What the Prefect UI's Custom run form sends untouched: every default its parameter schema declares."""
    node = schema if node is None else node
    if "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    for choice in node.get("anyOf", []):
        if "$ref" in choice or choice.get("type") == "object":
            return form_defaults(schema, choice)
    values = {}
    for name, prop in node.get("properties", {}).items():
        if prop.get("default") is not None:
            values[name] = prop["default"]
        elif nested := form_defaults(schema, prop):
            values[name] = nested
    return values


def deep_merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: f"{d['entrypoint']}-{d['name']}")
def test_an_untouched_custom_run_changes_nothing_the_deployment_does_not(deployment, monkeypatch, tmp_path):
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    flow = load_flow(deployment["entrypoint"])
    schema = parameter_schema(flow.fn).model_dump()
    form = deep_merge(form_defaults(schema), deployment.get("parameters", {}))
    validate(form, schema, raise_on_error=True)  # what the server checks at run creation
    for name, value in {**deployment["work_pool"].get("job_variables", {}).get("env", {}), "FRAGUA_WORK_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    settings = flow.validate_parameters(form)["settings"]
    assert settings == Settings.load(**deployment.get("parameters", {}).get("settings", {}))
    assert settings.work_dir == tmp_path  # the worker's environment beats the schema's old default ".fragua"


def test_the_form_shows_every_field_with_its_effective_default_but_sends_none():
    from fragua.flows.train import train_flow
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(train_flow.fn).model_dump()
    batch_size = schema["definitions"]["TrainOverrides"]["properties"]["batch_size"]
    assert batch_size["description"].endswith("(default: 16)") and "default" not in batch_size
    assert form_defaults(schema) == {}
    assert set(schema["definitions"]["SettingsOverrides"]["properties"]) == set(Settings.model_fields)


def test_a_cleared_field_or_section_is_not_set(monkeypatch):
    from fragua.flows.train import train_flow

    monkeypatch.setenv("FRAGUA_TRAIN__BATCH_SIZE", "4")
    settings = train_flow.validate_parameters({"settings": {"train": {"batch_size": None, "epochs": 2}, "data": {}}})["settings"]
    assert (settings.train.batch_size, settings.train.epochs) == (4, 2)


@pytest.mark.parametrize(("path", "home"), [
    ("tracking.api_key", "fragua blocks save-wandb-key"), ("registry.secret_access_key", "registry.credentials_block"),
    ("registry.session_token", "registry.credentials_block"), ("intake.database_url", "FRAGUA_INTAKE__DATABASE_URL"),
    ("intake.api_token", "FRAGUA_INTAKE__API_TOKEN"),
])
def test_a_secret_is_never_a_run_parameter(path, home, capfd):
    from fragua.flows.pipeline import pipeline_flow
    from prefect.exceptions import ParameterTypeError
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    section, field = path.split(".")
    parameters = {"settings": {section: {field: CANARY}}}
    with pytest.raises(ValidationError) as refused:  # at run creation, by the server
        validate(parameters, parameter_schema(pipeline_flow.fn).model_dump(), raise_on_error=True)
    assert f"'{field}' was unexpected" in str(refused.value) and CANARY not in str(refused.value)
    with pytest.raises(ParameterTypeError) as failed:  # a run that bypassed the schema fails before it starts
        pipeline_flow.validate_parameters(parameters)
    assert f"{path} is a secret" in str(failed.value) and home in str(failed.value)
    assert CANARY not in str(failed.value) + "".join(capfd.readouterr())  # nor in what the worker prints


def test_a_cross_field_rule_fails_the_run_with_the_cli_message(monkeypatch):
    from fragua.flows.validate import validate_flow
    from fragua.settings import describe_validation_error
    from prefect.exceptions import ParameterTypeError
    from pydantic import ValidationError

    monkeypatch.setenv("FRAGUA_TRACKING__API_KEY", CANARY)
    with pytest.raises(ValidationError) as cli:
        Settings.load(validate={"max_new_tokens": 300})
    with pytest.raises(ParameterTypeError) as run:
        validate_flow.validate_parameters({"settings": {"validate": {"max_new_tokens": 300}}})
    assert describe_validation_error(cli.value) in str(run.value)
    assert "validate.max_new_tokens (300) must be below train.max_seq_length (256)" in str(run.value) and CANARY not in str(run.value)


def test_a_failed_validation_never_echoes_a_secret(monkeypatch, capfd):
    """The worker's output of a run whose settings are invalid: no secret from its environment or from a --set."""
    from fragua.flows.ingest import ingest_flow
    from fragua.settings import describe_validation_error
    from prefect.exceptions import ParameterTypeError
    from pydantic import ValidationError

    monkeypatch.setenv("FRAGUA_TRACKING__API_KEY", CANARY)
    with pytest.raises(ParameterTypeError) as run:
        ingest_flow.validate_parameters({"settings": {"train": {"batch_size": 0}}})
    assert "train.batch_size" in str(run.value)
    with pytest.raises(ValidationError) as cli:  # `--set tracking.api_key=4242` parses as a number
        Settings.load(tracking={"api_key": 4242424242})
    assert "tracking.api_key" in describe_validation_error(cli.value) and "4242424242" not in describe_validation_error(cli.value)
    captured = capfd.readouterr()
    assert CANARY not in captured.out + captured.err


def test_the_canary_is_judged_every_fifteen_minutes(monkeypatch):
    canary = next(d for d in DEPLOYMENTS if d["entrypoint"] == "fragua.flows.canary:canary_flow")
    [schedule] = canary["schedules"]
    assert schedule["interval"] == 900 and schedule.get("active", True)
    for name, value in canary["work_pool"]["job_variables"]["env"].items():
        monkeypatch.setenv(name, value)
    assert Settings.load(**canary["parameters"]["settings"]).registry.canary.min_requests == 200
