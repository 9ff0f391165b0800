"""The serving log: responses, feedback into the intake queue, per-version statistics and export.

Every test that opens a log runs twice, on SQLite and on PostgreSQL (the ``queue_url`` fixture)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from fragua.cli import app
from fragua.intake.queue import IntakeQueue
from fragua.intake.serving_log import (
    FeedbackConflict, InvalidFeedback, ServedResponse, ServingLog, UnknownResponse, feedback_key,
)

runner = CliRunner()
START = datetime(2025, 5, 1, 12, 0, tzinfo=timezone.utc)
QUESTION = "What time is check-out?"


def served(response_id: str, version: str = "acme-tiny-v1", *, at: datetime = START, latency: float = 100.0, ok: bool = True,
           question: str = QUESTION, answer: str = "Noon.", user: str | None = None) -> ServedResponse:
    return ServedResponse(
        response_id=response_id, version=version, requested_model="production", user=user, created_at=at, latency_ms=latency,
        prompt_tokens=12, completion_tokens=3 if ok else 0, ok=ok, error_type=None if ok else "timeout",
        messages=[{"role": "system", "content": "You are the hotel's assistant."}, {"role": "user", "content": question}],
        answer=answer if ok else None,
    )


def test_only_an_opted_in_log_keeps_prompts_and_answers(queue_url):
    ServingLog(queue_url).record(served("quiet-1"))
    logged = ServingLog(queue_url, log_requests=True)
    assert logged.record(served("loud-1"))
    assert not logged.record(served("loud-1", answer="A retried record changes nothing."))
    rows = {row.response_id: row for row in logged.logged()}
    assert (rows["quiet-1"].messages, rows["quiet-1"].answer) == (None, None)
    assert rows["loud-1"].messages[-1] == {"role": "user", "content": QUESTION} and rows["loud-1"].answer == "Noon."


def test_a_correction_becomes_a_pending_example_of_the_logged_question(queue_url):
    log = ServingLog(queue_url, log_requests=True)
    log.record(served("r-1", "acme-tiny-v2"))
    outcome = log.feedback("r-1", -1, correction="Check-out is at 11:00.")
    assert outcome.recorded and outcome.example_created and (outcome.version, outcome.rating) == ("acme-tiny-v2", -1)
    [pending] = IntakeQueue(queue_url).examples("pending")
    assert pending.id == outcome.example.id and pending.origin == "feedback" and pending.idempotency_key == feedback_key("r-1")
    assert pending.record["messages"] == [
        {"role": "system", "content": "You are the hotel's assistant."},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "Check-out is at 11:00."},
    ]
    assert pending.record["meta"] == {"response_id": "r-1", "version": "acme-tiny-v2", "requested_model": "production", "rating": -1}


def test_feedback_is_idempotent_by_response_id(queue_url):
    log = ServingLog(queue_url)  # requests not logged: the server passes the question it kept
    log.record(served("r-1"))
    first = log.feedback("r-1", -1, correction="At 11:00.", question=QUESTION)
    again = log.feedback("r-1", -1, correction="At 11:00.")  # a retry needs no question: the example exists
    assert not again.recorded and not again.example_created and again.example == first.example
    assert IntakeQueue(queue_url).counts()["pending"] == 1
    with pytest.raises(FeedbackConflict, match="already has different feedback"):
        log.feedback("r-1", 1)
    with pytest.raises(FeedbackConflict):
        log.feedback("r-1", -1, correction="At 10:00.", question=QUESTION)
    log.record(served("r-2"))
    assert log.feedback("r-2", 1).recorded and not log.feedback("r-2", 1).recorded
    assert IntakeQueue(queue_url).counts()["pending"] == 1


def test_feedback_that_cannot_be_taken_changes_nothing(queue_url):
    log = ServingLog(queue_url, max_correction_chars=50)
    log.record(served("r-1"))
    with pytest.raises(UnknownResponse, match="no response 'nope' was recorded"):
        log.feedback("nope", 1)
    with pytest.raises(InvalidFeedback, match="rating must be -1 .* or 1 .*, got 5"):
        log.feedback("r-1", 5)
    with pytest.raises(InvalidFeedback, match="correction for response 'r-1' is empty"):
        log.feedback("r-1", -1, correction="  ")
    with pytest.raises(InvalidFeedback, match="longer than intake.max_example_chars"):
        log.feedback("r-1", -1, correction="x" * 51, question=QUESTION)
    with pytest.raises(InvalidFeedback, match="needs the question it answers"):
        log.feedback("r-1", -1, correction="At 11:00.")
    assert IntakeQueue(queue_url).counts()["pending"] == 0
    # The rating of the refused correction was kept: the same feedback with its question completes it.
    assert log.feedback("r-1", -1, correction="At 11:00.", question=QUESTION).example_created


def test_version_stats_count_requests_errors_latency_and_ratings(queue_url):
    log = ServingLog(queue_url)
    for n in range(20):
        log.record(served(f"p-{n}", "acme-tiny-v1", at=START + timedelta(seconds=n), latency=float(10 * (n + 1))))
    log.record(served("p-failed", "acme-tiny-v1", ok=False, latency=1.0))
    log.record(served("c-1", "acme-tiny-v2", at=START + timedelta(hours=1), latency=50.0))
    log.record(served("c-2", "acme-tiny-v2", at=START + timedelta(hours=1), ok=False))
    log.record(served("old", "acme-tiny-v0", at=START - timedelta(days=1)))
    log.feedback("p-1", 1)
    log.feedback("p-2", -1)
    log.feedback("p-3", 1)
    log.feedback("c-1", -1)
    stats = log.version_stats()
    production = stats["acme-tiny-v1"]
    assert (production.requests, production.errors, production.completion_tokens) == (21, 1, 60)
    assert production.error_rate == pytest.approx(1 / 21)
    assert (production.latency_p50_ms, production.latency_p95_ms) == (100.0, 190.0)  # nearest rank of 10..200, failures left out
    assert (production.ratings, production.mean_rating) == (3, pytest.approx(1 / 3))
    canary = stats["acme-tiny-v2"]
    assert (canary.requests, canary.errors, canary.ratings, canary.mean_rating, canary.latency_p95_ms) == (2, 1, 1, -1.0, 50.0)
    since = log.version_stats(since=START + timedelta(minutes=30))
    assert set(since) == {"acme-tiny-v2"}
    assert set(log.version_stats(since=START)) == {"acme-tiny-v1", "acme-tiny-v2"}


def test_exported_requests_import_as_pending_examples(queue_url, tmp_path, monkeypatch):
    monkeypatch.setenv("FRAGUA_INTAKE__DATABASE_URL", queue_url)
    log = ServingLog(queue_url, log_requests=True)
    log.record(served("good-1", question="Is breakfast included?", answer="Yes, from 7 to 10."))
    log.record(served("bad-1", question="Is there parking?", answer="No."))
    log.record(served("failed-1", ok=False))
    log.feedback("good-1", 1)
    log.feedback("bad-1", -1, correction="Yes, in the garage, 20 euros a night.")
    ServingLog(queue_url).record(served("unlogged-1", "acme-tiny-v2"))
    out = tmp_path / "requests.jsonl"
    work = ["--work-dir", str(tmp_path / "work")]

    exported = runner.invoke(app, [*work, "requests", "export", str(out)], env={"COLUMNS": "200"})
    assert exported.exit_code == 0, exported.output
    assert "written" in exported.output and f"fragua import-data {out}" in exported.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["response_id"] for row in rows] == ["bad-1", "good-1"]  # by time, then id
    answers = {row["response_id"]: row["messages"][-1]["content"] for row in rows}
    assert answers == {"good-1": "Yes, from 7 to 10.", "bad-1": "Yes, in the garage, 20 euros a night."}
    refused = runner.invoke(app, [*work, "requests", "export", str(out)])
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    bad = tmp_path / "bad.jsonl"
    assert runner.invoke(app, [*work, "requests", "export", str(bad), "--rating", "bad"]).exit_code == 0
    assert [json.loads(line)["response_id"] for line in bad.read_text().splitlines()] == ["bad-1"]

    pending_before = IntakeQueue(queue_url).counts()["pending"]  # the correction's example
    imported = runner.invoke(app, [*work, "import-data", str(out)], env={"COLUMNS": "200"})
    assert imported.exit_code == 0, imported.output
    queue = IntakeQueue(queue_url)
    assert queue.counts()["pending"] == pending_before + 2
    by_question = {e.record["messages"][1]["content"]: e for e in queue.examples("pending") if e.origin == "import:requests.jsonl"}
    assert by_question["Is there parking?"].record["messages"][-1]["content"] == "Yes, in the garage, 20 euros a night."
    assert by_question["Is breakfast included?"].record["meta"]["served_version"] == "acme-tiny-v1"
    again = runner.invoke(app, [*work, "import-data", str(out)])
    assert again.exit_code == 0 and queue.counts()["pending"] == pending_before + 2


def test_status_shows_what_each_version_served(queue_url, tmp_path, monkeypatch):
    monkeypatch.setenv("FRAGUA_INTAKE__DATABASE_URL", queue_url)
    log = ServingLog(queue_url)
    log.record(served("r-1", "acme-tiny-v1"))
    log.record(served("r-2", "acme-tiny-v1", ok=False))
    log.feedback("r-1", 1)
    result = runner.invoke(app, ["--work-dir", str(tmp_path), "status"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Served by version" in result.output
    line = next(line for line in result.output.splitlines() if "acme-tiny-v1" in line)
    assert "50.00%" in line and "+1.00" in line
