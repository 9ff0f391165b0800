"""What the server tells the serving log, and the recent answers feedback can refer to.

Every answer (and every failed request whose version was known) is handed to a ``ServingLog``
as a ``Served`` record: counts and latency always, the texts for the log to keep when
serve.log_requests is on. ``POST /v1/feedback`` rates an answer by its response id; a correction
needs the question it answered, so the last serve.recent_responses answers are kept in memory
(``RecentResponses``) whether or not the log keeps texts.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class Served:
    """One request the server answered (``ok``) or failed, for the version that had it. The fields
    are those of the serving log's ``ServedResponse``, so a log takes it as it is."""

    response_id: str
    version: str
    requested_model: str  # what the client asked for: an alias or the version itself
    user: str | None
    created_at: datetime
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    ok: bool
    error_type: str | None  # the error's code when not ok, e.g. 'model_unavailable'
    messages: list[dict[str, str]]  # the request's {role, content} messages (a text prompt as one user message)
    answer: str | None

    @property
    def question(self) -> str | None:
        """What a correction answers: the last user message."""
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else None


class UnknownResponse(LookupError):
    """Feedback for a response id the server does not know (never given, or forgotten)."""


class Rated(Protocol):
    version: str


class ServingLog(Protocol):
    """Where served requests and feedback go (the intake database's serving log)."""

    def record(self, response: Served) -> object:
        """Keep one served request; called off the event loop, once the answer is complete and
        before the client has all of it (so feedback can follow at once)."""

    def feedback(self, response_id: str, rating: int, correction: str | None = None, question: str | None = None) -> Rated:
        """Store a rating (and a correction, with the ``question`` it answers, as a pending intake
        example) for ``response_id``; returns what names the rated version. Raises
        UnknownResponse when the log does not know the id."""


class RecentResponses:
    """The last ``capacity`` answers by response id, oldest forgotten first; thread-safe."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Served] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, served: Served) -> None:
        with self._lock:
            self._items[served.response_id] = served
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, response_id: str) -> Served | None:
        with self._lock:
            return self._items.get(response_id)

    def __len__(self) -> int:
        return len(self._items)

