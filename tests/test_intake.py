"""The intake queue: idempotency, the pending -> training -> trained lifecycle, crashed claims.

Every test that opens a queue runs twice, on SQLite and on PostgreSQL (the ``queue_url`` fixture)."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import update

from fragua.intake.queue import ExampleRow, IdempotencyConflict, IntakeQueue, RowError, messages_record, question_answer_record


@pytest.fixture
def queue(queue_url) -> IntakeQueue:
    return IntakeQueue(queue_url)


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


def test_a_batch_is_stored_and_claimed_in_its_own_order(queue):
    added = queue.add_many([(qa(i), key) for i, key in enumerate(["zulu", "alpha", "mike", None])])
    ids = [a.example.id for a in added]
    assert ids == sorted(ids)
    assert queue.claim("run-a", limit=2).example_ids == ids[:2]  # oldest first: the batch's first two


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


def test_claims_of_a_crashed_run_expire(queue_url):
    queue = IntakeQueue(queue_url, claim_timeout=timedelta(minutes=30))
    queue.add(qa(1))
    queue.claim("crashed-run")
    assert queue.release_stale() == 0  # still young: the run may be training
    with queue.engine.begin() as connection:
        connection.execute(update(ExampleRow).values(claimed_at=ExampleRow.claimed_at - timedelta(hours=1)))
    assert queue.release_stale() == 1
    [example] = queue.examples("pending")
    assert "did not finish" in example.last_error
    assert queue.mark_trained("crashed-run", "v9") == 0  # a late report of the dead run changes nothing


def test_the_same_keys_stored_by_many_writers_at_once_are_stored_once(queue):
    """Eight writers store the same 60 keys at the same moment, each in its own order: six in
    batches of 20, two one at a time. Each key is created by exactly one of them, every other call
    is a retry, none fails (on PostgreSQL the losing insert must not abort its transaction, and
    batches overlapping in different orders must not deadlock)."""
    writers, batch, keys = 8, 20, [f"race-{i}" for i in range(60)]
    start = threading.Barrier(writers)

    def writer(number: int) -> list[tuple[str, int, bool]]:
        order = random.Random(number).sample(keys, len(keys))
        start.wait()
        added = []
        for offset in range(0, len(order), batch):
            chunk = order[offset:offset + batch]
            if number > 1:
                added += zip(chunk, queue.add_many([(qa(int(k.split("-")[1])), k) for k in chunk]))
            else:
                added += [(k, queue.add(qa(int(k.split("-")[1])), key=k)) for k in chunk]
        return [(key, a.example.id, a.created) for key, a in added]

    with ThreadPoolExecutor(writers) as pool:
        results = [row for rows in pool.map(writer, range(writers)) for row in rows]

    assert len(results) == writers * len(keys)
    assert sorted(key for key, _, created in results if created) == sorted(keys)
    ids = {key: {example_id for k, example_id, _ in results if k == key} for key in keys}
    assert all(len(found) == 1 for found in ids.values()), "a key came back with two different examples"
    stored = queue.examples(limit=1000)
    assert sorted(e.idempotency_key for e in stored) == sorted(keys)
    assert {e.idempotency_key: e.id for e in stored} == {key: found.pop() for key, found in ids.items()}


def test_records_come_back_exactly_as_stored(queue):
    """Whatever JSON text can hold survives the database: non-ASCII, a NUL character, deep meta,
    and an origin as long as a file name (import:<name>) can make it."""
    record = question_answer_record(
        "¿Dónde está el gimnasio? 🏋️ \x00 \u2028 end", "Planta 2 — «junto al spa»", system="Sé breve.", domain="hôtel",
        meta={"nested": {"list": [1, 2.5, None, True, "ü"]}, "big": 2**53},
    )
    origin = "import:" + "n" * 255 + ".jsonl"
    added = queue.add(record, key="unicode-1", origin=origin)
    [stored] = queue.examples()
    assert stored.record == record and stored.origin == origin and stored.id == added.example.id
    assert not queue.add(record, key="unicode-1").created  # the same content hash, read back from the database


def test_conversations_are_checked_like_ingest_checks_them():
    record = messages_record([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    with pytest.raises(RowError):
        messages_record([{"role": "user", "content": "no answer"}, {"role": "user", "content": "still none"}])


def test_any_sqlalchemy_url_works(tmp_path):
    other = IntakeQueue(f"sqlite:///{tmp_path / 'elsewhere' / 'queue.sqlite'}")
    other.add(qa(1))
    assert (tmp_path / "elsewhere" / "queue.sqlite").is_file()
