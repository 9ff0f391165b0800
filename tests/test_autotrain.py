"""A failed autotrain run leaves its examples pending and notifies; the CLI feeds the same queue."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fragua.cli import app
from fragua.intake.queue import IntakeQueue, question_answer_record
from fragua.settings import Settings

from .webhook import WebhookReceiver


def test_a_failed_run_leaves_the_examples_pending_and_sends_a_failure_notification(prefect_api, tmp_path):
    from fragua.blocks import save_webhook
    from fragua.flows.autotrain import autotrain_flow

    with WebhookReceiver() as receiver:
        settings = Settings(
            work_dir=tmp_path / "work", tracking={"mode": "disabled"},
            data={"sources": [{"path": str(tmp_path / "missing.jsonl")}]},
            notifications={"block": save_webhook(receiver.url, "failure-alerts")},
        )
        queue = IntakeQueue.from_settings(settings)
        queue.add(question_answer_record("Where is the gym?", "On floor 2."))
        with pytest.raises(Exception, match="missing.jsonl"):
            autotrain_flow(settings, force=True)
        [example] = queue.examples()
        assert example.status == "pending" and example.version is None and "missing.jsonl" in example.last_error
        assert queue.last_run().state == "failed"
        [message] = receiver.received
        assert message["subject"].startswith("Fragua: autotrain run") and message["subject"].endswith("failed")


def test_cli_add_import_status_version(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    runner = CliRunner()
    work = ["--work-dir", str(tmp_path / "work")]
    added = runner.invoke(app, [*work, "add", "What time is check-in?", "From 15:00.", "--domain", "hotel", "--key", "faq-1"])
    assert added.exit_code == 0, added.output
    again = runner.invoke(app, [*work, "add", "What time is check-in?", "From 15:00.", "--domain", "hotel", "--key", "faq-1"])
    assert "already queued" in again.output

    rows = tmp_path / "alpaca.jsonl"
    rows.write_text("\n".join([
        json.dumps({"instruction": "Is there parking?", "input": "", "output": "Yes, in the basement."}),
        json.dumps({"instruction": "Do you allow pets?", "output": "Small pets only."}),
        "{not json",
        json.dumps({"instruction": "", "output": "an answer without a question"}),
    ]) + "\n")
    imported = runner.invoke(app, [*work, "import-data", str(rows)])
    assert imported.exit_code == 0, imported.output
    assert "alpaca" in imported.output and "rejected" in imported.output
    assert "alpaca.jsonl:3" in imported.output.replace("\n", "") or "line 3" in imported.output
    twice = runner.invoke(app, [*work, "import-data", str(rows)])
    assert twice.exit_code == 0
    queue = IntakeQueue.from_settings(Settings(work_dir=tmp_path / "work"))
    assert queue.counts()["pending"] == 3  # one added, two imported once
    assert {e.origin for e in queue.examples()} == {"cli", "import:alpaca.jsonl"}

    status = runner.invoke(app, [*work, "status"])
    assert status.exit_code == 0 and "pending" in status.output and "none yet" in status.output
    version = runner.invoke(app, [*work, "version"])
    assert version.exit_code == 0 and "fragua 0.1.0" in version.output
    skipped = runner.invoke(app, [*work, "train", "--queue", "--dataset", "x"])
    assert skipped.exit_code == 2 and "--queue" in skipped.output
