"""A failed autotrain run leaves its examples pending and notifies; the CLI feeds the same queue."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from fragua.cli import app
from fragua.intake.queue import IntakeQueue, messages_record, question_answer_record
from fragua.registry import open_registry
from fragua.settings import Settings

from .conftest import QUICK
from .test_cli import fragua_process
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


# Examples production already holds ---------------------------------------------------------------------------


@pytest.fixture
def in_production(validated_work, tmp_path) -> tuple[Settings, str, dict[str, list]]:
    """A work dir whose production version is the validated run, and its dataset's records per split."""
    from fragua.data.store import load_records, open_dataset_store
    from fragua.jobs.registry import publish_run
    from fragua.registry import open_registry

    template, run_id = validated_work
    work = tmp_path / "work"
    shutil.copytree(template, work)
    settings = Settings(work_dir=work, **QUICK)
    manifest = publish_run(settings, run_id)
    open_registry(settings).promote(manifest.version, reason="test")
    dataset = open_dataset_store(settings).find(manifest.lineage["dataset_id"])
    records = {split: [r for r in load_records(dataset, split) if not r.choices] for split in ("train", "validation")}
    return settings, manifest.version, records


def queued_copy(queue: IntakeQueue, record, key: str) -> None:
    queue.add(messages_record([m.model_dump() for m in record.messages]), key=key, origin="cli")


def test_examples_production_already_holds_are_resolved_once_as_duplicates(prefect_api, in_production):
    settings, version, records = in_production
    queue = IntakeQueue.from_settings(settings)
    for i, record in enumerate(records["train"][:3]):
        queued_copy(queue, record, f"seen-{i}")
    queued_copy(queue, records["validation"][0], "held-out")
    env = {**os.environ, "FRAGUA_TRACKING__MODE": "disabled"}
    work = ["--work-dir", str(settings.work_dir)]

    code, output = fragua_process(*work, "autotrain", "--force", env=env)
    assert code == 0 and "Traceback" not in output, output
    # the run's log line, and the command's answer
    assert [line for line in output.splitlines() if line.startswith("nothing new to train")] == [
        f"nothing new to train: 4 of 4 claimed examples are already in the dataset of production version {version}: marked duplicate, not trained again"
    ]
    assert queue.counts() == {"pending": 0, "training": 0, "trained": 0, "duplicate": 4}
    examples = {e.idempotency_key: e for e in queue.examples()}
    assert all(e.status == "duplicate" and e.version == version for e in examples.values())
    assert "train split" in examples["seen-0"].last_error and "trained on it" in examples["seen-0"].last_error
    assert "validation split" in examples["held-out"].last_error and "never trained on" in examples["held-out"].last_error
    assert open_registry(settings).production().version == version  # nothing was trained or deployed

    code, output = fragua_process(*work, "autotrain", "--force", env=env)  # the next cycle does not claim them again
    assert code == 0 and "0 examples pending, 1 needed: nothing to train" in output and "nothing new" not in output, output
    assert queue.counts()["duplicate"] == 4 and [e.attempts for e in queue.examples()] == [1, 1, 1, 1]
    last, first = queue.runs(2)
    assert first.state == "skipped" and first.message.startswith("nothing new to train") and last.message == "0 pending, 1 needed"

    code, output = fragua_process(*work, "status", env=env)
    assert code == 0 and "duplicate" in output and "(seen-0): duplicate: its content is already in the train split" in output, output


def test_duplicates_do_not_count_towards_min_new_examples(prefect_api, in_production):
    from fragua.flows.autotrain import autotrain_flow

    settings, version, records = in_production
    settings = settings.model_copy(update={"intake": settings.intake.model_copy(update={"min_new_examples": 3})})
    queue = IntakeQueue.from_settings(settings)
    for i, record in enumerate(records["train"][:2]):
        queued_copy(queue, record, f"seen-{i}")
    queue.add(question_answer_record("Is the rooftop bar open in winter?", "Yes, heated, until 23:00."), key="new")

    result = autotrain_flow(settings)
    assert result.state == "skipped" and result.duplicates == 2 and result.production == version
    assert "1 new, 3 needed" in result.reasons[0]
    assert {e.idempotency_key: e.status for e in queue.examples()} == {"seen-0": "duplicate", "seen-1": "duplicate", "new": "pending"}
    again = autotrain_flow(settings)
    assert again.state == "skipped" and again.pending == 1 and again.duplicates == 0
