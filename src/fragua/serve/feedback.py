"""The recent answers feedback can refer to.

Every answer (and every failed request whose version was known) is recorded in the serving log
(``fragua.intake.serving_log``): counts and latency always, the texts only when
serve.log_requests is on. ``POST /v1/feedback`` rates an answer by its response id; a correction
needs the question it answered, so the last serve.recent_responses answers are kept in memory
(``RecentResponses``) whether or not the log keeps texts.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from fragua.intake.serving_log import ServedResponse


def question_of(served: ServedResponse) -> str | None:
    """What a correction answers: the request's last user message."""
    users = [m["content"] for m in served.messages if m.get("role") == "user"]
    return users[-1] if users else None


class RecentResponses:
    """The last ``capacity`` answers by response id, oldest forgotten first; thread-safe."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, ServedResponse] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, served: ServedResponse) -> None:
        with self._lock:
            self._items[served.response_id] = served
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, response_id: str) -> ServedResponse | None:
        with self._lock:
            return self._items.get(response_id)

    def __len__(self) -> int:
        return len(self._items)
