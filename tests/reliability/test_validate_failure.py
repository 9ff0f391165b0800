"""A pipeline whose validate step fails (the production version's weights rotted in storage,
so it cannot be compared): the run stops with a clear error and the registry is untouched.

Gates that *reject* a candidate are covered by tests/test_validation_flows.py; here the
validate step itself fails, and nothing after it may run.
"""

from __future__ import annotations

import shutil

import pytest

from fragua.registry import open_registry
from fragua.registry.versions import PRODUCTION
from fragua.settings import Settings

from ..conftest import QUICK

pytestmark = pytest.mark.e2e

QUICK_FLAGS = ["--set", "tracking.mode=disabled", "--set", "train.max_steps=2", "--set", "validate.max_examples=4",
               "--set", "validate.min_score=0.0", "--set", "validate.require_beat_base=false", "--set", "validate.max_new_tokens=8"]


@pytest.mark.slow(seconds=50)
def test_a_failing_validate_step_stops_the_pipeline_and_production_stays(prefect_api, validated_work, fragua_cli, tmp_path):
    from fragua.flows.deploy import deploy_flow

    template, run_id = validated_work
    work = tmp_path / "work"
    shutil.copytree(template, work)
    settings = Settings(work_dir=work, **QUICK)
    assert deploy_flow(settings, run_id).production == "fragua-tiny-v1"
    registry = open_registry(settings)
    before = (registry.alias(PRODUCTION), registry.history(), registry.store.list_keys(""))

    stored = work / "registry" / "models" / "fragua" / "versions" / "fragua-tiny-v1" / "adapter_model.safetensors"
    weights = bytearray(stored.read_bytes())
    weights[-16:] = bytes(16)  # same size, different bytes: a disk or a bucket that lost data
    stored.write_bytes(bytes(weights))
    shutil.rmtree(work / "cache", ignore_errors=True)  # a machine without a verified copy of its own

    # The flow-run lines below are Prefect INFO logs; `make test` exports PREFECT_LOGGING_LEVEL=WARNING.
    code, output = fragua_cli(*QUICK_FLAGS, "run", work_dir=work, extra_env={"PREFECT_LOGGING_LEVEL": "INFO"})
    assert code == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    (error,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert "fragua-tiny-v1" in error and "checksum" in error, error
    assert "for flow 'validate'" in output and "for flow 'deploy'" not in output  # as far as validate, no further

    assert (registry.alias(PRODUCTION), registry.history(), registry.store.list_keys("")) == before
    assert [m.version for m in registry.versions()] == ["fragua-tiny-v1"]
