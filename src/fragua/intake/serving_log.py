"""What `fragua serve` answered, and what users said about it, in the intake queue's database.

Every response is a row: which version produced it for which requested model, when, how fast,
how many tokens, whether it failed. Prompts and answers are kept only when the log is opened with
``log_requests`` (the server's opt-in ``serve.log_requests``), for `fragua requests export` and
`fragua import-data`. Feedback rates a response -1 (bad) or 1 (good); a correction becomes a
pending intake example whose idempotency key is derived from the response id, so `autotrain`
learns from it and a repeated feedback adds nothing. Per-version statistics over a period feed
`fragua status` and the canary decision.

Works the same on SQLite and PostgreSQL, on the engine the intake queue uses.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal

import orjson
from pydantic import BaseModel, Field
from sqlalchemy import JSON, Boolean, DateTime, Float, Index, Integer, String, Text, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fragua.data.records import RowError
from fragua.intake.queue import Example, IntakeQueue, QueueUnavailable, engine_for, messages_record
from fragua.registry.canary_decision import VersionStats
from fragua.settings import Settings

RESPONSE_ID_MAX = 128
TRAINING_ROLES = ("system", "user", "assistant")
Rating = Literal[-1, 1]
RatingFilter = Literal["good", "bad", "any"]


class ServingLogError(ValueError):
    """Feedback the log cannot take; the message names the response and the problem."""


class UnknownResponse(ServingLogError):
    """No response with this id was recorded (the server answers 404)."""


class FeedbackConflict(ServingLogError):
    """This response was already given different feedback (the server answers 409)."""


class InvalidFeedback(ServingLogError):
    """A rating other than -1 or 1, an empty correction, or a correction without its question (422)."""


class ServedResponse(BaseModel):
    """One answered (or failed) request, as the server records it."""

    response_id: str = Field(min_length=1, max_length=RESPONSE_ID_MAX, description="The id the response carried; feedback names it.")
    version: str = Field(description="The registry version that produced (or failed to produce) the answer.")
    requested_model: str = Field(description="What the client asked for: an alias (production, canary) or a version name.")
    user: str | None = Field(None, description="The request's `user` field, when given.")
    created_at: datetime
    latency_ms: float = Field(ge=0)
    prompt_tokens: int = Field(0, ge=0)
    completion_tokens: int = Field(0, ge=0)
    ok: bool = True
    error_type: str | None = Field(None, max_length=100, description="What went wrong when not ok, e.g. 'timeout'.")
    messages: list[dict[str, Any]] = Field(default_factory=list, description="The request's {role, content} messages; kept only with log_requests.")
    answer: str | None = Field(None, description="The generated answer; kept only with log_requests.")


@dataclass(frozen=True)
class FeedbackOutcome:
    response_id: str
    version: str
    rating: int
    recorded: bool  # False: the same feedback was given before (a retry)
    example: Example | None  # the pending intake example a correction became
    example_created: bool


@dataclass(frozen=True)
class ExportCount:
    written: int
    without_text: int  # matching responses whose prompt and answer were not logged, or that failed


class Base(DeclarativeBase):
    pass


class ServedRow(Base):
    __tablename__ = "serving_responses"
    __table_args__ = (Index("ix_serving_responses_version_time", "version", "created_at"),)

    response_id: Mapped[str] = mapped_column(String(RESPONSE_ID_MAX), primary_key=True)
    version: Mapped[str] = mapped_column(Text)
    requested_model: Mapped[str] = mapped_column(Text)
    end_user: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime())
    latency_ms: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    ok: Mapped[bool] = mapped_column(Boolean)
    error_type: Mapped[str | None] = mapped_column(String(100), nullable=True)
    messages: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    rated_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    example_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


_UPSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
_READY: set[str] = set()
_READY_LOCK = threading.Lock()


def _naive_utc(moment: datetime) -> datetime:
    # As the queue stores times: naive UTC, which every backend compares alike.
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


def _with_tables(url: str) -> Engine:
    engine = engine_for(url)
    with _READY_LOCK:
        if url not in _READY:
            try:
                Base.metadata.create_all(engine)
            except OperationalError as exc:
                reason = " ".join(str(exc.orig).split())
                raise QueueUnavailable(f"the intake queue's database {engine.url.render_as_string(hide_password=True)} cannot be reached: {reason}") from None
            _READY.add(url)
    return engine


def feedback_key(response_id: str) -> str:
    """The intake idempotency key of the example a response's correction becomes."""
    return f"feedback:{response_id}"


def training_turns(messages: list[dict[str, Any]]) -> list[dict[str, str]] | None:
    """The request's conversation up to its last user message, in the roles training reads; None without one."""
    turns = [{"role": m["role"], "content": m["content"]} for m in messages if m.get("role") in TRAINING_ROLES and isinstance(m.get("content"), str)]
    last_user = max((i for i, turn in enumerate(turns) if turn["role"] == "user"), default=None)
    return None if last_user is None else turns[: last_user + 1]


class ServingLog:
    def __init__(self, source: Settings | str, *, log_requests: bool = False, max_correction_chars: int | None = None) -> None:
        """The log in ``source``'s intake database (Settings, or an SQLAlchemy URL); prompts and answers
        are stored only with ``log_requests``. Corrections longer than ``max_correction_chars`` (from
        Settings: intake.max_example_chars) are refused."""
        if isinstance(source, Settings):
            self.url = source.intake_url
            max_correction_chars = max_correction_chars or source.intake.max_example_chars
        else:
            self.url = source
        self.engine = _with_tables(self.url)
        self.log_requests = log_requests
        self.max_correction_chars = max_correction_chars

    def describe(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def record(self, response: ServedResponse) -> bool:
        """Store one response; False when its id was already recorded (nothing changes)."""
        row = {
            "response_id": response.response_id, "version": response.version, "requested_model": response.requested_model,
            "end_user": response.user, "created_at": _naive_utc(response.created_at), "latency_ms": response.latency_ms,
            "prompt_tokens": response.prompt_tokens, "completion_tokens": response.completion_tokens, "ok": response.ok,
            "error_type": response.error_type,
            "messages": response.messages if self.log_requests else None,
            "answer": response.answer if self.log_requests else None,
        }
        statement = _UPSERTS[self.engine.dialect.name](ServedRow).values(row).on_conflict_do_nothing(index_elements=[ServedRow.response_id])
        with self._session() as session, session.begin():
            return session.execute(statement.returning(ServedRow.response_id)).first() is not None

    # feedback ----------------------------------------------------------------------------

    def feedback(self, response_id: str, rating: int, correction: str | None = None, question: str | None = None) -> FeedbackOutcome:
        """Rate a response -1 or 1; a ``correction`` becomes a pending intake example of the request's
        conversation (or, when the request was not logged, of ``question``) answered by the correction.
        The same feedback again returns the same outcome; different feedback raises FeedbackConflict."""
        if rating not in (-1, 1):
            raise InvalidFeedback(f"rating must be -1 (bad) or 1 (good), got {rating!r}")
        if correction is not None and not correction.strip():
            raise InvalidFeedback(f"the correction for response {response_id!r} is empty; leave it out to only rate")
        if correction is not None and self.max_correction_chars and len(correction) > self.max_correction_chars:
            raise InvalidFeedback(f"the correction is {len(correction)} characters, longer than intake.max_example_chars ({self.max_correction_chars})")
        with self._session() as session, session.begin():
            row = session.get(ServedRow, response_id)
            if row is None:
                raise UnknownResponse(f"no response {response_id!r} was recorded by this server's log ({self.describe()})")
            if row.rating is None:
                recorded = session.execute(
                    update(ServedRow).where(ServedRow.response_id == response_id, ServedRow.rating.is_(None))
                    .values(rating=rating, correction=correction, rated_at=_naive_utc(datetime.now(timezone.utc)))
                ).rowcount == 1
                session.refresh(row)
            else:
                recorded = False
            if (row.rating, row.correction) != (rating, correction):
                raise FeedbackConflict(f"response {response_id!r} already has different feedback (rating {row.rating}); feedback is given once")
        example, created = None, False
        if correction is not None:
            example, created = self._correction_example(row, correction, question)
        return FeedbackOutcome(response_id, row.version, rating, recorded, example, created)

    def _correction_example(self, row: ServedRow, correction: str, question: str | None) -> tuple[Example, bool]:
        queue = IntakeQueue(self.url)
        if row.example_id is not None and (stored := queue.get(row.example_id)) is not None:
            return stored, False
        turns = training_turns(row.messages or []) or ([{"role": "user", "content": question}] if question and question.strip() else None)
        if turns is None:
            raise InvalidFeedback(
                f"response {row.response_id!r}: its request was not logged (serve.log_requests is off), so the correction needs the question it answers"
            )
        meta = {"response_id": row.response_id, "version": row.version, "requested_model": row.requested_model, "rating": row.rating}
        try:
            record = messages_record([*turns, {"role": "assistant", "content": correction}], meta=meta)
        except RowError as exc:
            raise InvalidFeedback(f"response {row.response_id!r}: the correction cannot become an example: {exc}") from None
        added = queue.add(record, key=feedback_key(row.response_id), origin="feedback")
        with self._session() as session, session.begin():
            session.execute(update(ServedRow).where(ServedRow.response_id == row.response_id).values(example_id=added.example.id))
        return added.example, added.created

    # statistics --------------------------------------------------------------------------

    def version_stats(self, since: datetime | None = None) -> dict[str, VersionStats]:
        """Per version: requests, errors, latency percentiles of the successful ones, tokens and ratings,
        of the responses served since ``since`` (all when None)."""
        window = [ServedRow.created_at >= _naive_utc(since)] if since is not None else []
        query = (
            select(
                ServedRow.version, func.count(), func.sum(case((ServedRow.ok.is_(False), 1), else_=0)),
                func.sum(ServedRow.completion_tokens), func.count(ServedRow.rating), func.avg(ServedRow.rating),
            )
            .where(*window)
            .group_by(ServedRow.version)
        )
        stats = {}
        with self._session() as session:
            for version, requests, errors, tokens, ratings, mean in session.execute(query).all():
                succeeded = requests - int(errors or 0)
                p50, p95 = (self._latency(session, version, window, succeeded, q) for q in (0.5, 0.95))
                stats[version] = VersionStats(
                    version=version, requests=requests, errors=int(errors or 0), latency_p50_ms=p50, latency_p95_ms=p95,
                    completion_tokens=int(tokens or 0), ratings=ratings, mean_rating=float(mean) if mean is not None else None,
                )
        return stats

    @staticmethod
    def _latency(session: Session, version: str, window: list[Any], succeeded: int, quantile: float) -> float | None:
        """Nearest-rank percentile, computed by the database (no backend-specific function, no rows in memory)."""
        if not succeeded:
            return None
        rank = max(1, math.ceil(quantile * succeeded))
        query = (
            select(ServedRow.latency_ms).where(ServedRow.version == version, ServedRow.ok.is_(True), *window)
            .order_by(ServedRow.latency_ms).offset(rank - 1).limit(1)
        )
        return float(session.scalar(query))

    # export ------------------------------------------------------------------------------

    def logged(self, *, version: str | None = None, rating: RatingFilter = "any") -> Iterator[ServedRow]:
        query = select(ServedRow).order_by(ServedRow.created_at, ServedRow.response_id)
        if version is not None:
            query = query.where(ServedRow.version == version)
        if rating != "any":
            query = query.where(ServedRow.rating == (1 if rating == "good" else -1))
        with self._session() as session:
            yield from session.scalars(query.execution_options(yield_per=500))

    def export(self, path: Path, *, version: str | None = None, rating: RatingFilter = "any") -> ExportCount:
        """Logged conversations as chat-format JSONL rows `fragua import-data` reads: the request's
        messages, then the correction when feedback gave one, else the served answer."""
        written = without_text = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            for row in self.logged(version=version, rating=rating):
                turns = training_turns(row.messages or [])
                answer = row.correction or row.answer
                if turns is None or not row.ok or not answer:
                    without_text += 1
                    continue
                out: dict[str, Any] = {
                    "messages": [*turns, {"role": "assistant", "content": answer}],
                    "response_id": row.response_id, "served_version": row.version, "rating": row.rating, "corrected": row.correction is not None,
                }
                handle.write(orjson.dumps(out) + b"\n")
                written += 1
        return ExportCount(written, without_text)


__all__ = [
    "ExportCount", "FeedbackConflict", "FeedbackOutcome", "InvalidFeedback", "ServedResponse", "ServingLog", "ServingLogError",
    "UnknownResponse", "feedback_key",
]
