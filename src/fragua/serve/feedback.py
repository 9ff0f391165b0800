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
from typing import Literal, Protocol

from fragua.serve.engine import Prompt


@dataclass(frozen=True)
class Served:
    """One request the server answered (``error`` None) or failed, for the version that had it."""

    response_id: str
    version: str
    requested_model: str  # what the client asked for: an alias or the version itself
    endpoint: Literal["chat", "completion"]
    prompt: Prompt
    answer: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    user: str | None
    created_at: datetime
    status: int  # the HTTP status the client got (200, or the error's)
    error: str | None = None


class UnknownResponse(LookupError):
    """Feedback for a response id the server does not know (never given, or forgotten)."""


class ServingLog(Protocol):
    """Where served requests and feedback go (the intake database's serving log)."""

    def record(self, served: Served) -> None:
        """Keep one served request; called off the event loop, after the answer is complete."""

    def feedback(self, response_id: str, rating: int, correction: str | None, served: Served | None) -> Served:
        """Store a rating (and a correction as a pending intake example) for ``response_id``;
        ``served`` is the answer when it is still in memory. Returns the rated answer; raises
        UnknownResponse when neither ``served`` nor the log knows the id."""


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

