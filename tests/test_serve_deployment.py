"""The server's Docker target and Kubernetes manifests agree with its settings: the ConfigMap and
Secret references name real settings and build valid Settings, the probes, ports and Service fit
the server's port, and the image's command is the one the Deployment runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from fragua.settings import Settings
from fragua.settings.base import ENV_NESTED_DELIMITER, ENV_PREFIX

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "deployments" / "kubernetes" / "serve.yaml"
DOCKERFILE = ROOT / "Dockerfile"


def _documents() -> dict[str, dict]:
    return {document["kind"]: document for document in yaml.safe_load_all(MANIFEST.read_text())}


def _container() -> dict:
    return _documents()["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def _container_port(name_or_number: str | int) -> int:
    ports = _container()["ports"]
    return next(p["containerPort"] for p in ports if name_or_number in (p["name"], p["containerPort"]))


def _field_exists(name: str) -> bool:
    """Whether FRAGUA_<SECTION>__<FIELD> (or a root FRAGUA_<FIELD>) names a setting."""
    path = name.removeprefix(ENV_PREFIX).lower().split(ENV_NESTED_DELIMITER)
    model = Settings
    for part in path:
        field = model.model_fields.get(part)
        if field is None:
            return False
        model = field.annotation
    return True


def test_manifest_holds_a_configmap_a_deployment_and_a_service():
    assert set(_documents()) == {"ConfigMap", "Deployment", "Service"}


def test_every_fragua_variable_is_a_setting_and_the_configmap_builds_valid_settings(monkeypatch):
    config = _documents()["ConfigMap"]["data"]
    secrets = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in _container()["env"]}
    names = [name for name in [*config, *secrets] if name.startswith(ENV_PREFIX)]
    assert [name for name in names if not _field_exists(name)] == []
    for name, value in config.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.serve.engine == "vllm" and settings.registry.backend == "s3" and settings.registry.bucket
    assert settings.serve.port == _container_port("http")


def test_the_api_key_and_s3_keys_come_from_secrets_never_the_configmap():
    config = _documents()["ConfigMap"]["data"]
    secrets = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in _container()["env"]}
    assert secrets["FRAGUA_SERVE__API_KEY"] == {"name": "fragua-serve", "key": "api-key"}
    assert {"FRAGUA_REGISTRY__ACCESS_KEY_ID", "FRAGUA_REGISTRY__SECRET_ACCESS_KEY"} <= set(secrets)
    assert not any(re.search(r"KEY|SECRET|TOKEN|PASSWORD", name) for name in config)


def test_probes_ports_and_service_fit_the_servers_port():
    container = _container()
    default_port = Settings.model_fields["serve"].default_factory().port
    assert _container_port("http") == default_port
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == container["startupProbe"]["httpGet"]["path"] == "/health"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert _container_port(container[probe]["httpGet"]["port"]) == default_port
    service = _documents()["Service"]["spec"]
    pod_labels = _documents()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()
    assert _container_port(service["ports"][0]["targetPort"]) == default_port


def test_the_pod_asks_for_a_gpu_memory_and_shared_memory_for_vllm():
    container = _container()
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["memory"] and resources["limits"]["memory"] and resources["requests"]["cpu"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    volumes = {v["name"]: v for v in _documents()["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"


def _stage(name: str) -> str:
    text = DOCKERFILE.read_text()
    match = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert match, f"the Dockerfile has no stage {name}"
    return match.group(1)


def test_dockerfile_serve_target_runs_the_server_with_a_health_check():
    serve = _stage("serve")
    default_port = Settings.model_fields["serve"].default_factory().port
    assert f"EXPOSE {default_port}" in serve
    assert re.search(r"HEALTHCHECK .*\n?.*/health", serve)
    command = re.search(r"^CMD (\[.*\])$", serve, flags=re.MULTILINE)
    assert command and yaml.safe_load(command.group(1)) == ["fragua", "serve", "--host", "0.0.0.0"] == _container()["command"]


def test_a_plain_docker_build_still_makes_the_worker_image():
    text = DOCKERFILE.read_text()
    last = re.findall(r"^FROM (\S+) AS (\S+)$", text, flags=re.MULTILINE)[-1]
    assert last == ("runtime", "worker")
    assert _stage("worker").strip() == ""


@pytest.mark.parametrize("name", ["FRAGUA_SERVE__ENGINE", "FRAGUA_REGISTRY__BUCKET", "FRAGUA_WORK_DIR"])
def test_field_lookup_finds_real_settings(name):
    assert _field_exists(name) and not _field_exists(name + "_TYPO")
