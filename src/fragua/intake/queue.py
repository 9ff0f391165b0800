"""The intake queue: a durable store of examples waiting to be trained on (SQLAlchemy 2).

An example is ``pending`` until an autotrain run claims it (``training``); it becomes
``trained`` only when a version trained on it is deployed, and goes back to ``pending``
when the run fails, is not promoted, or crashed and left its claim older than
``intake.claim_timeout_minutes``. A claimed example whose content the production version's
dataset already holds becomes ``duplicate``: ``version`` names that deployed version and the
reason says which split holds it, so no run claims it again and nothing is deleted. Every
example carries an idempotency key: posting the same key again returns the stored example
instead of adding a second one, and reusing a key for different content is refused.

Every statement works the same on SQLite and PostgreSQL (the queue's tests run on both): a
claim is one UPDATE over candidates PostgreSQL locks with ``FOR UPDATE SKIP LOCKED`` (SQLite
runs it under its single write lock), and a key a concurrent request stored first is skipped
by ``INSERT ... ON CONFLICT DO NOTHING`` instead of raising an error that aborts the transaction.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

import orjson
from sqlalchemy import JSON, DateTime, Integer, String, Text, create_engine, event, func, insert, make_url, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fragua.data.formats.adapt import adapt_row
from fragua.data.records import Message, RecordDraft, RowError, content_key, record_id
from fragua.settings import Settings

Status = Literal["pending", "training", "trained", "duplicate"]
STATUSES: tuple[Status, ...] = ("pending", "training", "trained", "duplicate")
KEY_MAX = 200


class IntakeError(ValueError):
    """Bad input for the queue; the message names the field or key."""


class IdempotencyConflict(IntakeError):
    """An idempotency key that is already stored with different content."""


class QueueUnavailable(ConnectionError):
    """The queue's database cannot be reached (a ConnectionError: tasks retry it); the message names it."""


def _now() -> datetime:
    # Naive UTC: SQLite keeps no zone, and comparisons must agree on every backend.
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class ExampleRow(Base):
    __tablename__ = "intake_examples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(KEY_MAX), unique=True)
    content_sha: Mapped[str] = mapped_column(String(64))
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    origin: Mapped[str] = mapped_column(Text)  # "import:<file name>": as long as a file name
    status: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    batch_id: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    version: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime())
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    trained_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)


class RunRow(Base):
    """One autotrain run: skipped, running, succeeded, failed or crashed."""

    __tablename__ = "intake_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    examples: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[str | None] = mapped_column(Text, nullable=True)
    flow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)


@dataclass(frozen=True)
class Example:
    id: int
    idempotency_key: str
    record: dict[str, Any]
    origin: str
    status: str
    version: str | None
    batch_id: str | None
    attempts: int
    last_error: str | None
    created_at: str
    trained_at: str | None

    @classmethod
    def of(cls, row: ExampleRow) -> Example:
        return cls(
            row.id, row.idempotency_key, row.record, row.origin, row.status, row.version, row.batch_id, row.attempts,
            row.last_error, _iso(row.created_at), _iso(row.trained_at) if row.trained_at else None,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "idempotency_key": self.idempotency_key, "status": self.status, "version": self.version,
            "origin": self.origin, "attempts": self.attempts, "last_error": self.last_error,
            "created_at": self.created_at, "trained_at": self.trained_at, **self.record,
        }


@dataclass(frozen=True)
class Added:
    example: Example
    created: bool  # False: the key was already stored with the same content (a retry)


@dataclass(frozen=True)
class Batch:
    """The examples one autotrain run claimed."""

    id: str
    example_ids: list[int]

    @property
    def size(self) -> int:
        return len(self.example_ids)


@dataclass(frozen=True)
class RunInfo:
    id: str
    state: str
    examples: int
    version: str | None
    flow_run_id: str | None
    message: str | None
    started_at: str
    finished_at: str | None

    @classmethod
    def of(cls, row: RunRow) -> RunInfo:
        return cls(row.id, row.state, row.examples, row.version, row.flow_run_id, row.message, _iso(row.started_at),
                   _iso(row.finished_at) if row.finished_at else None)


def _iso(moment: datetime) -> str:
    return moment.replace(tzinfo=timezone.utc).isoformat()


# Building queue entries ------------------------------------------------------------------


def draft_record(draft: RecordDraft) -> dict[str, Any]:
    """What the queue stores of an example: the canonical parts a dataset row needs."""
    record: dict[str, Any] = {"messages": [m.model_dump() for m in draft.messages]}
    if draft.choices:
        record["choices"] = list(draft.choices)
        record["answer"] = draft.answer
    if draft.domain:
        record["domain"] = draft.domain
    if draft.meta:
        record["meta"] = draft.meta
    return record


def question_answer_record(
    question: str, answer: str, *, system: str | None = None, domain: str | None = None, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}, {"role": "assistant", "content": answer},
    ]
    return messages_record(messages, domain=domain, meta=meta)


def messages_record(messages: list[dict[str, Any]], *, domain: str | None = None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check a conversation with the same adapter ingest uses; RowError says what is wrong."""
    for message in messages:
        if not str(message.get("content", "")).strip():
            raise RowError(f"a {message.get('role')} message is empty", "empty")
    draft = adapt_row({"messages": messages}, "chat")
    draft.domain = domain
    draft.meta = dict(meta or {})
    return draft_record(draft)


def content_sha(record: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()


def content_id(record: dict[str, Any]) -> str:
    """The id ingest will give this example (content hash of the messages)."""
    draft = RecordDraft([Message(**m) for m in record["messages"]])
    return record_id(content_key(draft))


def _key_lock(key: str) -> int:
    """The PostgreSQL advisory-lock number of an idempotency key (a signed 64-bit hash)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


def check_key(key: str | None) -> str:
    if key is None:
        return f"auto:{uuid.uuid4().hex}"
    if not key.strip() or len(key) > KEY_MAX or any(ord(c) < 32 for c in key):
        raise IntakeError(f"invalid idempotency_key {key[:40]!r}: 1-{KEY_MAX} printable characters")
    return key


# The queue -----------------------------------------------------------------------------


_ENGINES: dict[str, Engine] = {}
_UPSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
_ENGINES_LOCK = threading.Lock()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the writer; a committed example survives a killed process.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def engine_for(url: str) -> Engine:
    with _ENGINES_LOCK:
        engine = _ENGINES.get(url)
        if engine is None:
            engine = _open(url)
            _ENGINES[url] = engine
    return engine


def _open(url: str) -> Engine:
    """An engine on ``url`` with the queue's tables; a bad URL or an unreachable database is one clear error."""
    try:
        shown = make_url(url).render_as_string(hide_password=True)
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=20, max_overflow=20)
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            # a pool as large as the API's concurrent requests (the load test's 20 clients)
            pool = {} if url.startswith("sqlite") else {"pool_size": 10, "max_overflow": 20}
            engine = create_engine(url, pool_pre_ping=True, **pool)
    except (ArgumentError, ImportError) as exc:  # a malformed URL, an unknown dialect, a driver not installed
        raise IntakeError(f"intake.database_url {url.split('@')[-1]!r} cannot be used: {exc}") from None
    try:
        Base.metadata.create_all(engine)
    except OperationalError as exc:
        engine.dispose()
        reason = " ".join(str(exc.orig).split())
        raise QueueUnavailable(f"the intake queue's database {shown} cannot be reached: {reason}") from None
    return engine


def dispose_engine(url: str) -> None:
    """Close this process's pooled connections to ``url`` (before its database is dropped)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.pop(url, None)
    if engine is not None:
        engine.dispose()


class IntakeQueue:
    def __init__(self, url: str, *, claim_timeout: timedelta = timedelta(hours=12)) -> None:
        self.url = url
        self.engine = engine_for(url)
        self.claim_timeout = claim_timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> IntakeQueue:
        return cls(settings.intake_url, claim_timeout=timedelta(minutes=settings.intake.claim_timeout_minutes))

    def describe(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # adding --------------------------------------------------------------------------

    def add(self, record: dict[str, Any], *, key: str | None = None, origin: str = "api") -> Added:
        return self.add_many([(record, key)], origin=origin)[0]

    def add_many(self, items: Sequence[tuple[dict[str, Any], str | None]], *, origin: str = "api") -> list[Added]:
        """Store every item whose key is new; items whose key is stored come back as retries.

        All-or-nothing: a key reused with different content raises IdempotencyConflict and
        stores none of the items."""
        keyed = [(record, check_key(key), content_sha(record)) for record, key in items]
        for attempt in range(3):
            try:
                return self._add_keyed(keyed, origin)
            except IntegrityError:
                # Only on a database without ON CONFLICT (see _insert_absent): a concurrent request
                # stored one of these keys between our read and insert. The next attempt, a new
                # transaction, sees the key as stored: a retry.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _add_keyed(self, keyed: list[tuple[dict[str, Any], str, str]], origin: str) -> list[Added]:
        first: dict[str, tuple[dict[str, Any], str]] = {}  # key -> (record, content sha) of its first item
        for record, key, sha in keyed:
            if first.setdefault(key, (record, sha))[1] != sha:
                raise IdempotencyConflict(f"idempotency_key {key!r} is given twice with different content")
        with self._session() as session, session.begin():
            by_key = select(ExampleRow).where(ExampleRow.idempotency_key.in_(list(first)))
            stored = set(session.scalars(by_key.with_only_columns(ExampleRow.idempotency_key)))
            now = _now()
            # In the given order, so ids (the order claims and pages follow) keep the batch's order.
            created = self._insert_absent(session, [
                {"idempotency_key": key, "content_sha": sha, "record": record, "origin": origin, "status": "pending", "attempts": 0, "created_at": now}
                for key, (record, sha) in first.items() if key not in stored
            ])
            rows = {row.idempotency_key: row for row in session.scalars(by_key)}
            for key, (_, sha) in first.items():
                if rows[key].content_sha != sha:
                    raise IdempotencyConflict(f"idempotency_key {key!r} is already stored with different content")
            results = []
            for _, key, _ in keyed:
                results.append(Added(Example.of(rows[key]), key in created))
                created.discard(key)  # the same key again later in this call is a retry
            return results

    def _insert_absent(self, session: Session, rows: list[dict[str, Any]]) -> set[str]:
        """Insert the rows whose key no one has stored; the keys inserted. A key a concurrent request
        stored meanwhile is skipped (ON CONFLICT DO NOTHING), not an error that aborts the transaction."""
        if not rows:
            return set()
        if self.engine.dialect.name == "postgresql":
            # Batches inserting the same new keys in different orders would each wait for an index
            # entry the other holds (a deadlock); keys locked first, in one order, make one wait.
            locks = sorted({_key_lock(row["idempotency_key"]) for row in rows})
            session.execute(text("SELECT pg_advisory_xact_lock(:lock)"), [{"lock": lock} for lock in locks])
        upsert = _UPSERTS.get(self.engine.dialect.name)
        if upsert is None:
            session.execute(insert(ExampleRow), rows)
            return {row["idempotency_key"] for row in rows}
        statement = upsert(ExampleRow).on_conflict_do_nothing(index_elements=[ExampleRow.idempotency_key])
        return set(session.scalars(statement.returning(ExampleRow.idempotency_key), rows))

    # reading -------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        with self._session() as session:
            found = dict(session.execute(select(ExampleRow.status, func.count()).group_by(ExampleRow.status)).all())
        return {status: int(found.get(status, 0)) for status in STATUSES}

    def examples(self, status: Status | None = None, *, limit: int = 100, after_id: int = 0) -> list[Example]:
        query = select(ExampleRow).where(ExampleRow.id > after_id).order_by(ExampleRow.id).limit(limit)
        if status is not None:
            query = query.where(ExampleRow.status == status)
        with self._session() as session:
            return [Example.of(row) for row in session.scalars(query)]

    def get(self, example_id: int) -> Example | None:
        with self._session() as session:
            row = session.get(ExampleRow, example_id)
            return Example.of(row) if row else None

    def last_run(self, *, trained: bool = False) -> RunInfo | None:
        query = select(RunRow).order_by(RunRow.started_at.desc()).limit(1)
        if trained:
            query = query.where(RunRow.state == "succeeded")
        else:
            query = query.where(RunRow.state != "skipped")
        with self._session() as session:
            row = session.scalars(query).first()
            return RunInfo.of(row) if row else None

    def runs(self, limit: int = 20) -> list[RunInfo]:
        with self._session() as session:
            return [RunInfo.of(r) for r in session.scalars(select(RunRow).order_by(RunRow.started_at.desc()).limit(limit))]

    # training lifecycle --------------------------------------------------------------

    def release_stale(self) -> int:
        """Claims older than the timeout belong to a run that died: their examples are pending again."""
        cutoff = _now() - self.claim_timeout
        with self._session() as session, session.begin():
            stale = list(session.scalars(
                select(RunRow.id).where(RunRow.state == "running", RunRow.started_at < cutoff)
            ))
            released = session.execute(
                update(ExampleRow)
                .where(ExampleRow.status == "training", ExampleRow.claimed_at < cutoff)
                .values(status="pending", batch_id=None, claimed_at=None,
                        last_error="the training run that claimed it did not finish within intake.claim_timeout_minutes")
            ).rowcount
            if stale:
                session.execute(
                    update(RunRow).where(RunRow.id.in_(stale))
                    .values(state="crashed", finished_at=_now(), message="claim expired: the run never reported back")
                )
        return int(released or 0)

    def record_skip(self, run_id: str, pending: int, needed: int, flow_run_id: str | None = None) -> None:
        with self._session() as session, session.begin():
            session.merge(RunRow(
                id=run_id, state="skipped", examples=pending, flow_run_id=flow_run_id, started_at=_now(), finished_at=_now(),
                message=f"{pending} pending, {needed} needed",
            ))

    def claim(self, run_id: str, *, limit: int | None = None, flow_run_id: str | None = None) -> Batch:
        """Move pending examples (oldest first) to 'training' under this run; concurrent runs never share one."""
        now = _now()
        # PostgreSQL locks the candidates, skipping rows a concurrent claim holds, and materializes
        # them once: a subquery re-run inside the UPDATE no longer sees the rows it just claimed
        # and would take more than the limit. A row another claim committed meanwhile fails the
        # outer status check.
        candidates = select(ExampleRow.id).where(ExampleRow.status == "pending").order_by(ExampleRow.id).with_for_update(skip_locked=True)
        if limit is not None:
            candidates = candidates.limit(limit)
        chosen = candidates.cte("candidates").prefix_with("MATERIALIZED", dialect="postgresql")
        with self._session() as session, session.begin():
            session.execute(
                update(ExampleRow)
                .where(ExampleRow.id.in_(select(chosen.c.id)), ExampleRow.status == "pending")
                .values(status="training", batch_id=run_id, claimed_at=now, attempts=ExampleRow.attempts + 1)
            )
            claimed = list(session.scalars(select(ExampleRow.id).where(ExampleRow.batch_id == run_id, ExampleRow.status == "training").order_by(ExampleRow.id)))
            session.merge(RunRow(id=run_id, state="running", examples=len(claimed), flow_run_id=flow_run_id, started_at=now))
        return Batch(run_id, claimed)

    def mark_trained(self, run_id: str, version: str) -> int:
        with self._session() as session, session.begin():
            done = session.execute(
                update(ExampleRow).where(ExampleRow.batch_id == run_id, ExampleRow.status == "training")
                .values(status="trained", version=version, trained_at=_now(), last_error=None)
            ).rowcount
            if done:  # a run whose claim expired reports too late: its examples are someone else's now
                session.execute(update(RunRow).where(RunRow.id == run_id).values(state="succeeded", version=version, finished_at=_now()))
        return int(done or 0)

    def mark_duplicates(self, run_id: str, reasons: dict[int, str], version: str) -> int:
        """This run's claimed examples whose content ``version`` already holds: ``duplicate``, with the reason."""
        done = 0
        with self._session() as session, session.begin():
            for reason in set(reasons.values()):
                ids = [example_id for example_id, why in reasons.items() if why == reason]
                done += session.execute(
                    update(ExampleRow).where(ExampleRow.id.in_(ids), ExampleRow.batch_id == run_id, ExampleRow.status == "training")
                    .values(status="duplicate", version=version, claimed_at=None, last_error=reason[:2000])
                ).rowcount or 0
        return done

    def release(self, run_id: str, reason: str, *, state: str = "failed") -> int:
        with self._session() as session, session.begin():
            released = session.execute(
                update(ExampleRow).where(ExampleRow.batch_id == run_id, ExampleRow.status == "training")
                .values(status="pending", batch_id=None, claimed_at=None, last_error=reason[:2000])
            ).rowcount
            session.execute(update(RunRow).where(RunRow.id == run_id).values(state=state, message=reason[:2000], finished_at=_now()))
        return int(released or 0)

    def batch_rows(self, run_id: str) -> Iterator[dict[str, Any]]:
        with self._session() as session:
            query = select(ExampleRow).where(ExampleRow.batch_id == run_id, ExampleRow.status == "training").order_by(ExampleRow.id)
            for row in session.scalars(query):
                yield dataset_row(row)

    def trained_rows(self) -> Iterator[dict[str, Any]]:
        with self._session() as session:
            for row in session.scalars(select(ExampleRow).where(ExampleRow.status == "trained").order_by(ExampleRow.id)):
                yield dataset_row(row)


def dataset_row(row: ExampleRow) -> dict[str, Any]:
    """A chat-format row the ingest adapters read back; intake details land in the record's meta."""
    record = row.record
    out: dict[str, Any] = {"messages": record["messages"], "intake_id": row.id, "intake_key": row.idempotency_key, "intake_origin": row.origin}
    if record.get("domain"):
        out["domain"] = record["domain"]
    for extra in ("choices", "answer", "meta"):
        if extra in record:
            out[f"intake_{extra}"] = record[extra]
    return out


def write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("wb") as handle:
        for row in rows:
            handle.write(orjson.dumps(row) + b"\n")
            count += 1
    return count


def new_run_id() -> str:
    return f"autotrain-{_now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


__all__ = [
    "Added", "Batch", "Example", "IdempotencyConflict", "IntakeError", "IntakeQueue", "QueueUnavailable", "RowError", "RunInfo",
    "content_id", "messages_record", "new_run_id", "question_answer_record", "write_jsonl",
]
