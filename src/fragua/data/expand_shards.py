"""The row-local half of expansion, cut into shards that a :class:`ShardRunner` runs anywhere.

A :class:`SurveyShard` looks at train rows before expanding (does each nearly ask a held-out
question, and which strategies apply to it); a :class:`VariantShard` makes the rule-based
variants of a run of parents, screened. Each variant draws from a generator seeded by its
strategy and parent, so a shard's result does not depend on where it ran or how the rows were cut.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Protocol, Sequence

from fragua.data import augment
from fragua.data.augment import bare_question
from fragua.data.records import Message, Record
from fragua.data.screening import Candidate, HeldOutGuard, screened
from fragua.data.shards import Pending
from fragua.settings import DataSettings

RULES: dict[str, Callable[..., list[Record]]] = {
    "mcq_permutation": augment.permute_choices,
    "reformulation": augment.reformulate,
    "answer_format": augment.answer_formats,
    "squad_context": augment.squad_with_context,
    "squad_closed_book": augment.squad_closed_book,
    "turn_split": augment.split_turns,
}
PROMPTS: dict[str, tuple[Callable[[Record], list[Message] | None], Callable[[Record, str], tuple[Record, str]]]] = {
    "paraphrase": (augment.paraphrase_prompt, augment.paraphrase_variant),
    "self_instruct": (augment.self_instruct_prompt, augment.self_instruct_variant),
}


def _rule(strategy: str, data: DataSettings) -> Callable[..., list[Record]]:
    function = RULES[strategy]
    return partial(function, no_answer_text=data.no_answer_text) if strategy == "squad_closed_book" else function


def _eligible(strategy: str, record: Record, data: DataSettings) -> bool:
    if strategy in RULES:
        return bool(_rule(strategy, data)(record, random.Random(0), 1))
    return PROMPTS[strategy][0](record) is not None


@dataclass(frozen=True)
class SurveyShard:
    """Train rows to look at before expanding: whether each asks (nearly) a held-out question,
    and, if not, which strategies apply to it."""

    records: list[Record]
    strategies: tuple[str, ...]
    data: DataSettings

    @property
    def label(self) -> str:
        return f"survey {len(self.records)} train rows from {self.records[0].id}"

    def run(self, guard: HeldOutGuard | None) -> list[tuple[bool, tuple[str, ...]]]:
        assert guard is not None
        results = []
        for record in self.records:
            resembles = guard.match(bare_question(record)) is not None
            results.append((resembles, () if resembles else tuple(s for s in self.strategies if _eligible(s, record, self.data))))
        return results


@dataclass(frozen=True)
class VariantShard:
    """A run of parents of one rule-based strategy: up to ``limit`` variants of each, screened."""

    strategy: str
    parents: list[Record]
    seed: int
    limit: int
    data: DataSettings

    @property
    def label(self) -> str:
        return f"{self.strategy} of {len(self.parents)} parents from {self.parents[0].id}"

    def run(self, guard: HeldOutGuard | None = None) -> list[list[Candidate]]:
        function = _rule(self.strategy, self.data)
        variants = [function(parent, random.Random(f"{self.seed}:{self.strategy}:{parent.id}"), self.limit) for parent in self.parents]
        flat = screened([Candidate(v, parent) for parent, vs in zip(self.parents, variants) for v in vs], self.data)
        per_parent, start = [], 0
        for vs in variants:
            per_parent.append(flat[start: start + len(vs)])
            start += len(vs)
        return per_parent


ExpandShard = SurveyShard | VariantShard


class ShardRunner(Protocol):
    def share(self, guard: HeldOutGuard, held_out: Sequence[Record]) -> Any:
        """A handle to ``guard`` (built from ``held_out``) that shards can use, sent to each worker at most once."""

    def submit(self, work: ExpandShard, guard: Any = None) -> Pending[Any]:
        """Start ``work.run(guard)`` (``guard``: a handle from :meth:`share`); the result comes later."""


class _Deferred:
    def __init__(self, work: ExpandShard, guard: HeldOutGuard | None) -> None:
        self.work, self.guard = work, guard

    def result(self) -> Any:
        return self.work.run(self.guard)


class InProcess:
    """Shards run here, when their result is asked for: no work is done ahead of the merge."""

    def share(self, guard: HeldOutGuard, held_out: Sequence[Record]) -> HeldOutGuard:
        return guard

    def submit(self, work: ExpandShard, guard: Any = None) -> _Deferred:
        return _Deferred(work, guard)


@dataclass(frozen=True)
class Sharding:
    runner: ShardRunner = field(default_factory=InProcess)
    rows: int = 8192  # most train rows per survey shard, parents per variant shard
    in_flight: int = 3  # survey shards submitted and not yet merged

    def cut(self, records: Sequence[Record]) -> list[list[Record]]:
        return [list(records[i: i + self.rows]) for i in range(0, len(records), self.rows)]
