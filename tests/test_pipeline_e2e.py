"""The whole product on the tiny model through Prefect: pipeline twice, rollback once."""

from __future__ import annotations

import json

import pytest

from fragua.data.ingest import IngestError
from fragua.registry import open_registry
from fragua.registry.versions import sha256_file
from fragua.settings import Settings

from .conftest import EXAMPLES
from .prefect_runs import flow_runs, tagged

pytestmark = pytest.mark.e2e


@pytest.mark.slow(seconds=80)
def test_pipeline_twice_then_rollback(prefect_api, tmp_path):
    from fragua.flows.deploy import rollback_flow
    from fragua.flows.pipeline import pipeline_flow

    work = tmp_path / "work"
    # The shipped defaults but 60 optimiser steps (of 180): enough to pass the default gates
    # (token F1 0.083, then 0.074 against v1's), which `make demo` runs at full length.
    train = {"max_steps": 60}
    first = Settings(work_dir=work, data={"sources": [{"path": str(EXAMPLES / "batch1")}]}, train=train)
    both = Settings(work_dir=work, data={"sources": [{"path": str(EXAMPLES / "batch1")}, {"path": str(EXAMPLES / "batch2")}]}, train=train)

    with tagged() as tag:
        v1 = pipeline_flow(first)
    assert v1.passed and v1.promoted and v1.version == "fragua-tiny-v1"
    v2 = pipeline_flow(both)
    assert v2.passed and v2.promoted and v2.version == "fragua-tiny-v2" and v2.production == "fragua-tiny-v2"
    assert v2.dataset_id != v1.dataset_id

    state = rollback_flow(first).production
    assert (state.version, state.previous) == ("fragua-tiny-v1", "fragua-tiny-v2")

    registry = open_registry(first)
    assert [m.version for m in registry.versions()] == ["fragua-tiny-v1", "fragua-tiny-v2"]
    assert registry.alias("production")[0].version == "fragua-tiny-v1"
    assert registry.alias("previous")[0].version == "fragua-tiny-v2"

    for manifest in registry.versions():
        stored = work / "registry" / "models" / "fragua" / "versions" / manifest.version
        assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md", "eval.json", "report.md"} <= set(manifest.files)
        for relative, entry in manifest.files.items():
            assert sha256_file(stored / relative) == entry.sha256
        assert json.loads((stored / "manifest.json").read_text())["version"] == manifest.version
        assert not list(stored.rglob("*.bin")) and not list(stored.rglob("*.pt"))

    newer = registry.manifest("fragua-tiny-v2")
    assert newer.metrics["overall"]["loss"] < newer.metrics["base"]["loss"]
    assert newer.metrics["production"] is not None  # compared with v1 on the same validation set
    assert newer.lineage["parent_version"] == "fragua-tiny-v1"
    assert newer.lineage["dataset_id"] == v2.dataset_id
    assert newer.lineage["prefect_flow_run_id"]
    assert newer.decision["passed"] is True
    assert "Validation of run" in (work / "registry" / "models" / "fragua" / "versions" / "fragua-tiny-v2" / "report.md").read_text()

    offline_runs = list((work / "wandb" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) >= 4  # a train and a validate run per pipeline
    assert newer.lineage["tracking_run"]

    names = [(flow, run.parent_task_run_id is not None) for flow, run in flow_runs(tag)]
    assert ("pipeline", False) in names
    for stage in ("ingest", "train", "validate", "deploy"):
        assert (stage, True) in names, f"{stage} did not run as a subflow"


def test_missing_input_fails_ingest_and_writes_nothing_to_the_registry(prefect_api, tmp_path):
    from fragua.flows.pipeline import pipeline_flow

    settings = Settings(work_dir=tmp_path / "work", data={"sources": [{"path": str(tmp_path / "missing.jsonl")}]}, tracking={"mode": "disabled"})
    with pytest.raises(IngestError, match=r"missing\.jsonl: no such file"):
        pipeline_flow(settings)
    assert not (tmp_path / "work" / "registry").exists()
