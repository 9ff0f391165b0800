"""A failed autotrain run leaves its examples pending and notifies; the CLI feeds the same queue;
two runs claiming at once never share an example. Each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid

import pytest
from typer.testing import CliRunner

from fragua.cli import app
from fragua.intake.queue import IntakeQueue, messages_record, question_answer_record
from fragua.registry import open_registry
from fragua.settings import Settings

from .conftest import QUICK
from .test_cli import fragua_process
from .webhook import WebhookReceiver


def test_a_failed_run_leaves_the_examples_pending_and_sends_a_failure_notification(prefect_api, queue_url, tmp_path):
    # The block's name is the test's own: the two variants run at once on the shared Prefect server.
    from fragua.blocks import save_webhook
    from fragua.flows.autotrain import autotrain_flow

    with WebhookReceiver() as receiver:
        settings = Settings(
            work_dir=tmp_path / "work", tracking={"mode": "disabled"},
            data={"sources": [{"path": str(tmp_path / "missing.jsonl")}]},
            notifications={"block": save_webhook(receiver.url, f"failure-alerts-{uuid.uuid4().hex[:8]}")}, intake={"database_url": queue_url},
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


def test_cli_add_import_status_version(queue_url, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    monkeypatch.setenv("FRAGUA_INTAKE__DATABASE_URL", queue_url)
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
    assert queue.url == queue_url  # the environment's database, as for every command above
    assert queue.counts()["pending"] == 3  # one added, two imported once
    assert {e.origin for e in queue.examples()} == {"cli", "import:alpaca.jsonl"}

    status = runner.invoke(app, [*work, "status"])
    assert status.exit_code == 0 and "pending" in status.output and "none yet" in status.output
    version = runner.invoke(app, [*work, "version"])
    assert version.exit_code == 0 and "fragua 0.1.0" in version.output
    skipped = runner.invoke(app, [*work, "train", "--queue", "--dataset", "x"])
    assert skipped.exit_code == 2 and "--queue" in skipped.output


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ('{"score": NaN}', "--meta: meta.score: NaN is not a JSON number"),
        ('{"n": 123456789012345678901234567890}', "--meta: meta.n: integer 123456789012…(30 characters) is outside the 64-bit range"),
        ('{"a": ' * 40 + "1" + "}" * 40, "nested deeper than intake.max_meta_depth (32 levels)"),
        ('{"a": "x\\ud800y"}', "--meta: meta.a: not valid Unicode: a lone surrogate"),
        ("[1, 2]", "--meta must be a JSON object, got list"),
        ("{not json", "--meta: meta.1: JSON decode error"),
    ],
    ids=["nan", "huge-int", "too-deep", "surrogate", "list", "invalid"],
)
def test_cli_add_meta_follows_the_api_rules_in_one_line(tmp_path, meta, message):
    """`fragua add --meta` refuses what the API refuses, in one line and without a traceback
    (NaN used to be stored as non-standard JSON; deep nesting and huge integers crashed it)."""
    runner = CliRunner()
    work = tmp_path / "work"
    refused = runner.invoke(app, ["--work-dir", str(work), "add", "Where is the gym?", "On floor 2.", "--meta", meta])
    assert refused.exit_code == 2, refused.output
    assert message in " ".join(refused.output.split()), refused.output
    assert "Traceback" not in refused.output
    assert IntakeQueue.from_settings(Settings(work_dir=work)).counts().get("pending", 0) == 0
    kept = runner.invoke(app, ["--work-dir", str(work), "add", "Where is the gym?", "On floor 2.", "--meta", '{"room": {"floor": 2}}'])
    assert kept.exit_code == 0, kept.output
    [example] = IntakeQueue.from_settings(Settings(work_dir=work)).examples()
    assert example.record["meta"] == {"room": {"floor": 2}}


def test_a_queue_database_that_cannot_be_reached_or_used_is_one_clear_line(tmp_path, monkeypatch):
    """A PostgreSQL server that is down, and a URL whose driver does not exist: exit 2, one message
    naming the database, no traceback, the password masked."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runner = CliRunner()
    for url, expected in ((f"postgresql+psycopg://fragua:s3cret@127.0.0.1:{port}/queue", f"127.0.0.1:{port}/queue cannot be reached"),
                          ("postgresql+nosuchdriver://fragua:s3cret@db.internal/queue", "postgresql.nosuchdriver")):
        monkeypatch.setenv("FRAGUA_INTAKE__DATABASE_URL", url)
        result = runner.invoke(app, ["--work-dir", str(tmp_path / "work"), "status"])
        output = " ".join(result.output.split())
        assert result.exit_code == 2 and output.startswith("error:") and expected in output, result.output
        assert "Traceback" not in output and "s3cret" not in output


# What autotrain's claim task does, in a loop: claim a batch as a new run, then report it trained.
CLAIMER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path

    from fragua.intake.autotrain import open_queue
    from fragua.intake.queue import new_run_id
    from fragua.settings import Settings

    settings = Settings(work_dir=sys.argv[1])  # the queue's URL and batch size come from the environment
    queue = open_queue(settings)
    go, mine, other = Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    while not go.exists():
        time.sleep(0.01)
    while True:
        run_id = new_run_id()
        batch = queue.claim(run_id, limit=settings.intake.max_examples_per_run)
        if not batch.size:
            break
        print(json.dumps({"run": run_id, "ids": batch.example_ids}), flush=True)
        assert queue.mark_trained(run_id, run_id) == batch.size
        if not mine.exists():  # both claim once before either goes on, so the rest runs side by side
            mine.touch()
            deadline = time.monotonic() + 120
            while not other.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
""")


@pytest.mark.slow(seconds=30)
def test_two_claiming_processes_at_once_claim_every_example_exactly_once(queue_url, tmp_path):
    """Two processes claim batches of 3 from 900 pending examples at the same time, as two
    autotrain runs would: each example lands in exactly one batch, and the database agrees
    (every example trained once, by the run that claimed it, after a single attempt)."""
    total, per_run = 900, 3
    queue = IntakeQueue(queue_url)
    queue.add_many([(question_answer_record(f"Which room is number {i}?", f"Room {i}."), f"room-{i}") for i in range(total)])
    env = {**os.environ, "FRAGUA_INTAKE__DATABASE_URL": queue_url, "FRAGUA_INTAKE__MAX_EXAMPLES_PER_RUN": str(per_run),
           "FRAGUA_TRACKING__MODE": "disabled"}
    go, ready = tmp_path / "go", [tmp_path / "first-claim-0", tmp_path / "first-claim-1"]
    claimers = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, str(tmp_path / "work"), str(go), str(ready[n]), str(ready[1 - n])],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n in range(2)
    ]
    go.touch()
    outputs = [claimer.communicate(timeout=600) for claimer in claimers]
    for claimer, (_, errors) in zip(claimers, outputs):
        assert claimer.returncode == 0, errors

    batches = [[json.loads(line) for line in out.splitlines()] for out, _ in outputs]
    assert all(batches), "one process claimed nothing: the claims never ran side by side"
    claimed = [i for mine in batches for batch in mine for i in batch["ids"]]
    assert len(claimed) == total and len(set(claimed)) == total, "an example was claimed twice, or never"
    assert all(0 < len(batch["ids"]) <= per_run for mine in batches for batch in mine)
    claimed_by = {i: batch["run"] for mine in batches for batch in mine for i in batch["ids"]}
    stored = queue.examples(limit=total + 1)
    assert queue.counts() == {"pending": 0, "training": 0, "trained": total, "duplicate": 0}
    assert {e.id: e.version for e in stored} == claimed_by and {e.attempts for e in stored} == {1}

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
