"""The intake queue: idempotency, the pending -> training -> trained lifecycle, crashed claims."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from fragua.intake.queue import ExampleRow, IdempotencyConflict, IntakeQueue, RowError, messages_record, question_answer_record


@pytest.fixture
def queue(tmp_path) -> IntakeQueue:
    return IntakeQueue(f"sqlite:///{tmp_path / 'intake.db'}")


def qa(i: int) -> dict:
    return question_answer_record(f"question {i}?", f"answer {i}", domain="hotel")


def test_same_key_same_content_is_a_retry_different_content_a_conflict(queue):
    first = queue.add(qa(1), key="k-1")
    again = queue.add(qa(1), key="k-1")
    assert first.created and not again.created and again.example.id == first.example.id
    with pytest.raises(IdempotencyConflict, match="k-1"):
        queue.add(qa(2), key="k-1")
    assert queue.counts() == {"pending": 1, "training": 0, "trained": 0, "duplicate": 0}


def test_examples_without_a_key_are_never_merged(queue):
    queue.add(qa(1))
    queue.add(qa(1))
    assert queue.counts()["pending"] == 2


def test_a_batch_with_a_conflicting_key_stores_nothing(queue):
    queue.add(qa(1), key="taken")
    with pytest.raises(IdempotencyConflict):
        queue.add_many([(qa(5), "new-1"), (qa(6), "taken")])
    assert queue.counts()["pending"] == 1
    added = queue.add_many([(qa(5), "new-1"), (qa(5), "new-1"), (qa(1), "taken")])
    assert [a.created for a in added] == [True, False, False]


def test_lifecycle_pending_training_trained(queue):
    for i in range(3):
        queue.add(qa(i))
    batch = queue.claim("run-a", limit=2)
    assert batch.size == 2 and queue.counts() == {"pending": 1, "training": 2, "trained": 0, "duplicate": 0}
    assert queue.claim("run-b").size == 1  # concurrent runs never share an example
    assert queue.release("run-b", "validation failed") == 1
    assert queue.mark_trained("run-a", "fragua-tiny-v3") == 2
    assert queue.counts() == {"pending": 1, "training": 0, "trained": 2, "duplicate": 0}
    trained = queue.examples("trained")
    assert {e.version for e in trained} == {"fragua-tiny-v3"} and all(e.trained_at for e in trained)
    [pending] = queue.examples("pending")
    assert pending.last_error == "validation failed" and pending.attempts == 1
    assert queue.last_run(trained=True).version == "fragua-tiny-v3"
    assert queue.last_run().state in {"failed", "succeeded"}


def test_claims_of_a_crashed_run_expire(tmp_path):
    queue = IntakeQueue(f"sqlite:///{tmp_path / 'intake.db'}", claim_timeout=timedelta(minutes=30))
    queue.add(qa(1))
    queue.claim("crashed-run")
    assert queue.release_stale() == 0  # still young: the run may be training
    with queue.engine.begin() as connection:
        connection.execute(update(ExampleRow).values(claimed_at=ExampleRow.claimed_at - timedelta(hours=1)))
    assert queue.release_stale() == 1
    [example] = queue.examples("pending")
    assert "did not finish" in example.last_error
    assert queue.mark_trained("crashed-run", "v9") == 0  # a late report of the dead run changes nothing


def test_conversations_are_checked_like_ingest_checks_them():
    record = messages_record([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    with pytest.raises(RowError):
        messages_record([{"role": "user", "content": "no answer"}, {"role": "user", "content": "still none"}])


def test_any_sqlalchemy_url_works(tmp_path):
    other = IntakeQueue(f"sqlite:///{tmp_path / 'elsewhere' / 'queue.sqlite'}")
    other.add(qa(1))
    assert (tmp_path / "elsewhere" / "queue.sqlite").is_file()
