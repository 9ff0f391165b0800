"""Champion/challenger through the flows on the tiny model: a destroyed candidate is rejected,
production stays; the promoted version carries its reports and plots and can be used by
`fragua eval-batch` and `fragua chat`."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from fragua.cli import app
from fragua.jobs.validate import load_validation
from fragua.registry import open_registry
from fragua.settings import Settings

from .conftest import EXAMPLES
from .prefect_runs import flow_runs, latest_artifact, tagged

pytestmark = pytest.mark.e2e


@pytest.mark.slow(seconds=50)
def test_a_destroyed_candidate_is_rejected_naming_the_metric_and_production_stays(prefect_api, tmp_path):
    from fragua.flows.pipeline import pipeline_flow

    work = tmp_path / "work"
    data = {"sources": [{"path": str(EXAMPLES / "batch1")}]}
    # The answers are shorter; both runs are judged alike, on a few questions of the shipped benchmark too.
    validate = {"max_new_tokens": 32, "benchmarks": [{"task": "fragua_general_knowledge", "limit": 4}]}
    champion = pipeline_flow(Settings(work_dir=work, data=data, train={"max_steps": 120}, validate=validate))
    assert champion.passed and champion.promoted and champion.version == "fragua-tiny-v1"

    registry = open_registry(Settings(work_dir=work))
    manifest = registry.manifest("fragua-tiny-v1")
    assert {"eval.json", "report.md", "loss_curve.png", "metrics_by_domain.png"} <= set(manifest.files)
    stored = work / "registry" / "models" / "fragua" / "versions" / "fragua-tiny-v1"
    assert "![Training and validation loss](loss_curve.png)" in (stored / "report.md").read_text()
    assert json.loads((stored / "eval.json").read_text())["decision"]["passed"] is True
    assert (stored / "loss_curve.png").read_bytes().startswith(b"\x89PNG")
    validate_runs = [p for p in (work / "wandb" / "wandb").glob("offline-run-*") if list(p.glob("files/media/images/validation/*.png"))]
    assert validate_runs, "the validation plots were logged to W&B"

    # The challenger: same data, a learning rate that destroys the adapters.
    destructive = Settings(work_dir=work, data=data, train={"learning_rate": 1.0, "max_steps": 20}, validate=validate, tracking={"mode": "disabled"})
    with tagged() as tag:
        challenger = pipeline_flow(destructive)

    assert not challenger.passed and not challenger.promoted and challenger.version is None
    assert challenger.production == "fragua-tiny-v1"
    failed = [r for r in challenger.reasons if r.startswith("FAIL")]
    assert any(r.startswith("FAIL token_f1") and "production fragua-tiny-v1" in r for r in failed), failed
    assert any(r.startswith("FAIL validation loss") for r in failed), failed
    outcome = load_validation(destructive, challenger.run_id)
    assert {"token_f1", "loss"} <= set(outcome.decision.failed_metrics)
    assert math.isnan(outcome.candidate.overall.loss)  # eval.json keeps the diverged loss as NaN
    assert (work / "runs" / challenger.run_id / "validation" / "metrics_by_domain.png").is_file()
    # The forgetting checks: production's benchmark scores are those it had as a candidate (kept at publish, not run again).
    champion_outcome = load_validation(destructive, champion.run_id)
    assert outcome.benchmarks.production == champion_outcome.benchmarks.candidate
    assert outcome.benchmarks.candidate["fragua_general_knowledge"].questions == 4
    assert [group.name for group in outcome.retention.groups] == ["trained", "older"]  # same data as v1: nothing new

    assert [m.version for m in registry.versions()] == ["fragua-tiny-v1"]
    assert registry.alias("production")[0].version == "fragua-tiny-v1"
    assert len(registry.history()) == 1

    [run] = [run for flow, run in flow_runs(tag) if flow == "pipeline"]
    assert run.state.type.value == "COMPLETED" and run.state.name == "Rejected"  # not a plain green Completed
    assert run.state.message.startswith(f"validation rejected run {challenger.run_id}: FAIL ")
    assert run.state.message.endswith("production stays fragua-tiny-v1")
    summary = latest_artifact(tag, "pipeline").data
    assert "| validation | FAILED |" in summary and "| version produced | none |" in summary and "- FAIL token_f1" in summary

    report = latest_artifact(tag, "validation-report")
    assert f"# Validation of run `{challenger.run_id}`: FAILED" in report.data
    assert "FAIL token_f1" in report.data and "![Metrics per domain](data:image/png;base64," in report.data
    assert "## General benchmarks (forgetting guard)" in report.data and "| base | production fragua-tiny-v1 | candidate |" in report.data
    assert "## Learning and forgetting on the team's data" in report.data and "| base | production fragua-tiny-v1 | candidate | Δ vs production |" in report.data
    table = latest_artifact(tag, "validation-metrics")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {row["model"] for row in rows} == {"candidate", "production fragua-tiny-v1", "base"}

    # The champion answers questions and chats, by version and by alias.
    runner = CliRunner()
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question": "What time is check-in?", "answer": "Check-in starts at 3:00 pm at the 24-hour reception on the ground floor.", "domain": "hotel"}) + "\n")
    answers = tmp_path / "answers.json"
    batch = runner.invoke(app, ["--work-dir", str(work), "eval-batch", str(questions), "--version", "fragua-tiny-v1", "-o", str(answers)])
    assert batch.exit_code == 0, batch.output
    written = json.loads(answers.read_text())
    assert written["model"]["version"] == "fragua-tiny-v1" and written["items"][0]["token_f1"] is not None
    chat = runner.invoke(app, ["--work-dir", str(work), "chat", "--alias", "production", "--greedy", "--max-new-tokens", "6"], input="What time is check-in?\n/exit\n")
    assert chat.exit_code == 0, chat.output
    assert "Chatting with fragua-tiny-v1 (production)" in chat.output and "model ›" in chat.output
