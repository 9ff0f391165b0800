"""Minimum bar: examples posted to the API become a new production version through autotrain."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from fragua.flows.autotrain import forced_autotrain
from fragua.intake.api import create_app
from fragua.intake.queue import IntakeQueue
from fragua.registry import open_registry
from fragua.settings import Settings

from .conftest import EXAMPLES
from .prefect_runs import flow_runs, latest_artifact, tagged
from .webhook import WebhookReceiver

pytestmark = pytest.mark.e2e

TOKEN = "e2e-token-271828"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
QUICK_PIPELINE = {
    "tracking": {"mode": "disabled"},
    "train": {"max_steps": 2},
    "validate": {"max_examples": 4, "min_score": 0.0, "require_beat_base": False, "max_new_tokens": 8, "regression_tolerance": 1.0},
}


def example(i: int) -> dict:
    return {"question": f"What is the room code of guest number {i}?", "answer": f"The room code of guest {i} is R-{i * 7}.",
            "domain": "hotel", "idempotency_key": f"guest-{i}"}


def test_ten_examples_through_the_api_become_a_version_nine_do_nothing(prefect_api, tiny_base, tmp_path):
    from fragua.blocks import save_webhook
    from fragua.flows.autotrain import autotrain_flow
    from fragua.flows.deploy import rollback_flow
    from fragua.flows.pipeline import pipeline_flow

    with WebhookReceiver() as receiver:
        settings = Settings(
            work_dir=tmp_path / "work", data={"sources": [{"path": str(EXAMPLES / "batch1")}]},
            train={**QUICK_PIPELINE["train"], "base_model": str(tiny_base)},
            intake={"api_token": TOKEN}, notifications={"block": save_webhook(receiver.url, "e2e-alerts")},
            **{k: v for k, v in QUICK_PIPELINE.items() if k != "train"},
        )
        assert pipeline_flow(settings).production == "fragua-tiny-v1"
        client = TestClient(create_app(settings, forced_autotrain))

        nine = client.post("/examples/batch", json={"examples": [example(i) for i in range(9)]}, headers=HEADERS)
        assert nine.status_code == 201 and nine.json()["created"] == 9
        with tagged() as tag:
            skipped = autotrain_flow(settings)
        assert (skipped.state, skipped.pending, skipped.needed) == ("skipped", 9, 10)
        [(_, run)] = flow_runs(tag)
        assert (run.name, run.state.name, run.state.message) == (skipped.run_id, "Nothing to train", "9 examples pending, 10 needed")
        assert [m.version for m in open_registry(settings).versions()] == ["fragua-tiny-v1"]
        assert client.get("/stats", headers=HEADERS).json()["examples"] == {"pending": 9, "training": 0, "trained": 0, "duplicate": 0}

        assert client.post("/examples", json=example(9), headers=HEADERS).status_code == 201
        with tagged() as tag:
            result = autotrain_flow(settings)
        assert (result.state, result.examples, result.version, result.production) == ("trained", 10, "fragua-tiny-v2", "fragua-tiny-v2")
        [run] = [run for flow, run in flow_runs(tag) if flow == "autotrain"]
        assert (run.name, run.state.name) == (result.run_id, "Promoted") and "version:fragua-tiny-v2" in run.tags
        assert run.state.message == "fragua-tiny-v2 promoted to production (was fragua-tiny-v1)"
        summary = latest_artifact(tag, "autotrain").data
        assert summary.startswith("# Autotrain: Promoted") and f"| intake run | `{result.run_id}` |" in summary
        assert "| production before | `fragua-tiny-v1` |" in summary and "10 trained on" in summary

        stats = client.get("/stats", headers=HEADERS).json()
        assert stats["production_version"] == "fragua-tiny-v2"
        assert stats["examples"] == {"pending": 0, "training": 0, "trained": 10, "duplicate": 0}
        assert stats["last_training"]["version"] == "fragua-tiny-v2" and stats["last_run"]["state"] == "succeeded"
        queue = IntakeQueue.from_settings(settings)
        assert {(e.status, e.version) for e in queue.examples(limit=100)} == {("trained", "fragua-tiny-v2")}
        manifest = open_registry(settings).manifest("fragua-tiny-v2")
        assert manifest.lineage["parent_version"] == "fragua-tiny-v1"
        incremental = manifest.lineage["incremental"]
        assert 0 < incremental["new_examples"] <= 10 and incremental["replayed_examples"] > 0

        assert autotrain_flow(settings).state == "skipped"  # nothing pending any more
        rollback_flow(settings)
        deploys = [s for s in receiver.subjects() if "deployed" in s]
        assert deploys == ["Fragua: fragua-tiny-v1 deployed", "Fragua: fragua-tiny-v2 deployed"]
        assert receiver.subjects()[-1] == "Fragua: production rolled back to fragua-tiny-v1"
