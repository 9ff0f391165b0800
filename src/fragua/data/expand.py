"""Train-split expansion toward ``expand.expansion_factor``, with provenance and no leakage.

Only train rows are parents, and every added row inherits its parent's group and split,
so the validation and test splits are never expanded and never gain a twin of a train row.
The rows to add are shared among the enabled strategies by weight; a strategy that runs
out of variants leaves its share to the others. Each strategy walks its parents in a
seeded order, one variant per parent per round, so additions spread over the data
instead of piling up on a few rows.

Every candidate goes through ingest's own checks (:mod:`fragua.data.screening`: lengths and the
quality score), exact dedupe against the train split and what was added so far, and the
leakage guard: a train row whose question nearly repeats a validation or test question is
not expanded, and model-written rows are compared with those questions too. Model-written
rows also go through near-duplicate removal when ``data.near_dedupe`` is on (template
variants are near-duplicates of their parent by design, so it does not apply to them).

The row-local work (the leakage check and eligibility of every train row; the rule-based
variants of a run of parents, screened) comes in shards (:mod:`fragua.data.expand_shards`) that a ShardRunner runs
anywhere: in this process, or as Prefect tasks on Dask or Ray. Each variant draws from a
generator seeded by its strategy and parent, and shards are merged in order, so the
expansion is the same whatever ran them and however they were cut. The order-dependent
half (dedupe against what was added so far, the share of each strategy) stays here.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Callable, Iterator, Sequence

from fragua.data.augment import Rejected, bare_question
from fragua.data.expand_shards import PROMPTS, RULES, Sharding, SurveyShard, VariantShard
from fragua.data.quality import NearDuplicates
from fragua.data.records import Message, Record
from fragua.data.screening import Candidate, HeldOutGuard, content_ids, screened
from fragua.data.shards import Pending, in_order
from fragua.settings import MODEL_STRATEGIES, DataSettings, ExpandSettings

# (prompts, seed) -> one generated text per prompt.
Generator = Callable[[Sequence[Sequence[Message]], int], list[str]]

EXAMPLES_PER_STRATEGY = 3


@dataclass
class Expansion:
    records: list[Record]  # the train split as given, then the added rows
    report: dict[str, Any]
    rejected: list[dict[str, Any]]  # quarantine entries of candidates that failed a check


@dataclass
class StrategyTally:
    weight: float
    eligible: int = 0
    target: int = 0
    added: int = 0
    generated: int = 0  # model calls' outputs, for the model-based strategies
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, str]] = field(default_factory=list)


def _apportion(total: int, weights: dict[Any, float]) -> dict[Any, int]:
    """``total`` split by weight, largest remainders first (ties in the given order)."""
    scale = sum(weights.values())
    exact = {name: total * weight / scale for name, weight in weights.items()}
    shares = {name: math.floor(value) for name, value in exact.items()}
    by_remainder = sorted(weights, key=lambda name: -(exact[name] - shares[name]))
    for name in by_remainder[: total - sum(shares.values())]:
        shares[name] += 1
    return shares


class _Expander:
    def __init__(self, train: Sequence[Record], settings: ExpandSettings, data: DataSettings, guard: HeldOutGuard) -> None:
        self.settings = settings
        self.data = data
        self.guard = guard
        self.seen = set(content_ids(train))
        self.added: list[Record] = []
        self.rejected: list[dict[str, Any]] = []
        self.tallies = {s: StrategyTally(settings.weights.get(s, 1.0)) for s in settings.strategies}
        self._near: NearDuplicates | None = None
        self._train = train

    def near_index(self) -> NearDuplicates | None:
        if not self.data.near_dedupe:
            return None
        if self._near is None:
            self._near = NearDuplicates(self.data.near_dedupe_threshold, self.data.near_dedupe_num_perm, self.data.near_dedupe_ngram)
            for record in self._train:
                self._near.check(_near_text(record), record.id)
        return self._near

    def reject(self, strategy: str, candidate_row: Any, parent: Record, kind: str, reason: str) -> None:
        self.tallies[strategy].rejected[kind] += 1
        self.rejected.append({"source": parent.source, "location": f"expand:{strategy}:parent {parent.id}", "kind": kind,
                              "reason": f"{strategy}: {reason}", "row": candidate_row})

    def _reject_candidate(self, strategy: str, candidate: Candidate, kind: str, reason: str) -> None:
        self.reject(strategy, candidate.record.model_dump(mode="json"), candidate.parent, kind, reason)

    def accept(self, strategy: str, candidates: list[Candidate], *, model_written: bool) -> int:
        """Check screened candidates in order and keep those that pass; returns how many were kept."""
        tally = self.tallies[strategy]
        near = self.near_index() if model_written and candidates else None
        kept = 0
        for candidate in candidates:
            record, ident = candidate.record, candidate.ident
            if candidate.problem is not None:
                self._reject_candidate(strategy, candidate, *candidate.problem)
            elif ident in self.guard.ids:
                self._reject_candidate(strategy, candidate, "leak", "identical to a held-out (validation or test) record")
            elif candidate.question is not None and (why := self.guard.match(candidate.question)):
                self._reject_candidate(strategy, candidate, "leak", why)
            elif ident in self.seen:
                tally.duplicates += 1
            elif near is not None and (match := near.check(_near_text(record), ident)):
                self._reject_candidate(strategy, candidate, "near_duplicate",
                                       f"near-duplicate of record {match[0]} (estimated similarity {match[1]:.2f} >= data.near_dedupe_threshold={near.threshold})")
            else:
                self.seen.add(ident)
                record.id = ident
                self.added.append(record)
                tally.added += 1
                kept += 1
                if len(tally.examples) < EXAMPLES_PER_STRATEGY:
                    tally.examples.append({"parent": _user_text(candidate.parent), "prompt": _user_text(record), "answer": record.reference})
        return kept


def _user_text(record: Record) -> str:
    users = [m.content for m in record.messages if m.role == "user"]
    return users[-1] if users else ""


def _near_text(record: Record) -> str:
    return f"{bare_question(record)}\n{record.reference}".lower()


class _RuleProducer:
    """Variants of one rule-based strategy, one per parent per round, parents in a seeded order.
    Shards are asked for as the merge needs parents, so no variant is made that is not looked at
    (short of rejects)."""

    def __init__(self, expander: _Expander, strategy: str, parents: list[Record], rng: random.Random, limit: int, sharding: Sharding) -> None:
        self.expander = expander
        self.strategy = strategy
        self.limit = limit
        self.sharding = sharding
        self.order = list(parents)
        rng.shuffle(self.order)
        self.pending: deque[Pending[list[list[Candidate]]]] = deque()
        self.submitted = 0  # parents in shards asked for
        self.reached = 0  # parents whose variants the merge has reached
        self.wanted = 0  # rows the current take still needs
        self.stream = self._rounds()
        self.exhausted = False

    def ask(self, rows: int) -> None:
        """Shards (of at most sharding.rows parents, as even as may be) for the next ``rows`` parents not yet asked for."""
        target = min(len(self.order), self.reached + rows)
        if target <= self.submitted:
            return
        size = math.ceil((target - self.submitted) / math.ceil((target - self.submitted) / self.sharding.rows))
        while self.submitted < target:
            stop = min(target, self.submitted + size)
            work = VariantShard(self.strategy, self.order[self.submitted: stop], self.expander.settings.seed, self.limit, self.expander.data)
            self.pending.append(self.sharding.runner.submit(work))
            self.submitted = stop

    def _per_parent(self) -> Iterator[list[Candidate]]:
        while self.reached < len(self.order):
            if not self.pending:
                self.ask(max(1, self.wanted))
            for variants in self.pending.popleft().result():
                self.reached += 1
                yield variants

    def _rounds(self) -> Iterator[Candidate]:
        seen: list[list[Candidate]] = []
        for variants in self._per_parent():
            seen.append(variants)
            if variants:
                yield variants[0]
        active = [variants for variants in seen if len(variants) > 1]
        turn = 1
        while active:
            for variants in active:
                yield variants[turn]
            turn += 1
            active = [variants for variants in active if len(variants) > turn]

    def take(self, count: int) -> int:
        kept = 0
        while kept < count:
            self.wanted = count - kept
            self.ask(self.wanted)
            batch = list(islice(self.stream, self.wanted))
            if not batch:
                break
            kept += self.expander.accept(self.strategy, batch, model_written=False)
        return kept


class _ModelProducer:
    """Model-written rows: prompts for parents in a seeded order, generated in batches,
    parsed, then checked like every candidate; at most attempts_per_row generations per row."""

    def __init__(self, expander: _Expander, strategy: str, parents: list[Record], rng: random.Random, generator: Generator) -> None:
        self.expander = expander
        self.strategy = strategy
        self.prompt, self.parse = PROMPTS[strategy]
        self.order = list(parents)
        rng.shuffle(self.order)
        self.rng = rng
        self.generator = generator
        self.cursor = 0
        self.exhausted = False

    def take(self, count: int) -> int:
        generation = self.expander.settings.generation
        budget = math.ceil(count * generation.attempts_per_row)
        tally = self.expander.tallies[self.strategy]
        kept = 0
        while kept < count and budget > 0:
            size = min(budget, count - kept)  # the generator batches; asking for more would waste what passes
            parents = [self.order[(self.cursor + i) % len(self.order)] for i in range(size)]
            self.cursor += size
            budget -= size
            prompts = [self.prompt(p) for p in parents]
            texts = self.generator([p for p in prompts if p is not None], self.rng.randrange(2**31))
            tally.generated += len(texts)
            candidates = []
            for parent, text in zip((p for p, prompt in zip(parents, prompts) if prompt is not None), texts):
                try:
                    record, question = self.parse(parent, text)
                except Rejected as rejected:
                    self.expander.reject(self.strategy, {"generated": text}, parent, rejected.kind, str(rejected))
                    continue
                candidates.append(Candidate(record, parent, question))
            kept += self.expander.accept(self.strategy, screened(candidates, self.expander.data), model_written=True)
        return kept


def _fill(expander: _Expander, producers: dict[tuple[str, str], _RuleProducer | _ModelProducer], count: int) -> int:
    """Add up to ``count`` rows from ``producers``, shared by strategy weight; a producer that
    falls short of its share is closed and its shortfall shared among the others."""
    added = 0
    while added < count:
        open_keys = [key for key, producer in producers.items() if not producer.exhausted]
        if not open_keys:
            break
        quotas = _apportion(count - added, {key: expander.tallies[key[1]].weight for key in open_keys})
        for key in open_keys:  # every producer's shards under way before the first is merged
            if isinstance(producers[key], _RuleProducer):
                producers[key].ask(quotas[key])
        for key in open_keys:
            if quotas[key] == 0:
                continue
            expander.tallies[key[1]].target += quotas[key]
            kept = producers[key].take(quotas[key])
            added += kept
            if kept < quotas[key]:
                producers[key].exhausted = True
    return added


def expand_train(
    train: Sequence[Record],
    settings: ExpandSettings,
    data: DataSettings | None = None,
    *,
    held_out: Sequence[Record] = (),
    generator: Generator | None = None,
    generator_label: str | None = None,
    sharding: Sharding | None = None,
) -> Expansion:
    """The train split plus augmentations toward ``expansion_factor``, what was rejected, and a report.

    ``held_out``: the validation and test records, kept out of what is added.
    ``generator``: writes text for the model-based strategies (required when one is enabled).
    ``sharding``: where the row-local work runs (default: here); the result does not depend on it.
    """
    data = data or DataSettings()
    sharding = sharding or Sharding()
    if settings.model_strategies and generator is None:
        raise ValueError(f"expand.strategies {settings.model_strategies} need a generator model (expand.generation.model)")
    train = list(train)
    guard = HeldOutGuard(held_out, settings.leakage_threshold)
    expander = _Expander(train, settings, data, guard)
    needed = max(0, math.ceil(len(train) * settings.expansion_factor - 1e-9) - len(train))
    notes: list[str] = []
    originals = [r for r in train if r.origin == "original"]
    shared = sharding.runner.share(guard, held_out) if originals else None
    surveys = (SurveyShard(rows, tuple(settings.strategies), data) for rows in sharding.cut(originals))
    verdicts = [v for shard in in_order(lambda work: sharding.runner.submit(work, shared), surveys, sharding.in_flight) for v in shard]
    resembling = sum(resembles for resembles, _ in verdicts)
    if resembling:
        notes.append(f"{resembling} train rows ask (nearly) the same question as a validation or test row; they were not expanded")

    eligible: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for record, (_, strategies) in zip(originals, verdicts):
        for strategy in strategies:
            eligible[record.domain, strategy].append(record)
    producers: dict[tuple[str, str], _RuleProducer | _ModelProducer] = {}
    for strategy in settings.strategies:
        for domain in sorted({r.domain for r in originals}):
            parents = eligible.get((domain, strategy), [])
            expander.tallies[strategy].eligible += len(parents)
            if not parents:
                continue
            rng = random.Random(f"{settings.seed}:{domain}:{strategy}")
            if strategy in RULES:
                producers[domain, strategy] = _RuleProducer(expander, strategy, parents, rng, max(1, math.ceil(needed / len(parents))), sharding)
            else:
                assert generator is not None
                producers[domain, strategy] = _ModelProducer(expander, strategy, parents, rng, generator)
        if not expander.tallies[strategy].eligible:
            notes.append(f"{strategy}: no train row it applies to")

    # Each domain toward the factor first, so that small domains are not swamped by the
    # strategies that suit big ones; then what a domain could not add comes from the others.
    before = Counter(r.domain for r in train)
    remaining = 0
    for domain in sorted(before):
        wanted = max(0, math.ceil(before[domain] * settings.expansion_factor - 1e-9) - before[domain])
        own = {key: producer for key, producer in producers.items() if key[0] == domain}
        short = wanted - _fill(expander, own, wanted)
        if short > 0 and needed:
            notes.append(f"domain {domain!r}: {wanted - short} of {wanted} rows from its own train rows")
        remaining += short
    remaining = min(remaining, needed - len(expander.added))
    if remaining > 0:
        _fill(expander, producers, remaining)
    if len(expander.added) < needed:
        notes.append(f"every strategy ran out of new variants: {len(expander.added)} of {needed} rows added")
    report = _report(train, expander, settings, needed, guard, resembling, notes, generator_label)
    return Expansion(train + expander.added, report, expander.rejected)


def _report(train: list[Record], expander: _Expander, settings: ExpandSettings, needed: int, guard: HeldOutGuard,
            resembling: int, notes: list[str], generator_label: str | None) -> dict[str, Any]:
    before = Counter(r.domain for r in train)
    added_by_domain: dict[str, Counter[str]] = defaultdict(Counter)
    for record in expander.added:
        added_by_domain[record.domain][record.origin] += 1
    total = len(train) + len(expander.added)
    strategies = {}
    for name, tally in expander.tallies.items():
        strategies[name] = {
            "weight": tally.weight, "eligible": tally.eligible, "target": tally.target, "added": tally.added,
            "factor": round(tally.added / len(train), 4) if train else 0.0,
            "duplicates": tally.duplicates, "rejected": dict(sorted(tally.rejected.items())),
            **({"generated": tally.generated} if name in MODEL_STRATEGIES else {}),
        }
    return {
        "target_factor": settings.expansion_factor,
        "achieved_factor": round(total / len(train), 4) if train else 1.0,
        "train_before": len(train),
        "train_after": total,
        "target_added": needed,
        "strategies": strategies,
        "per_domain": {
            domain: {
                "before": before[domain],
                "after": before[domain] + sum(added_by_domain[domain].values()),
                "factor": round((before[domain] + sum(added_by_domain[domain].values())) / before[domain], 4),
                "added": dict(sorted(added_by_domain[domain].items())),
            }
            for domain in sorted(before)
        },
        "leakage": {
            "held_out_records": len(guard.ids), "threshold": settings.leakage_threshold,
            "train_rows_not_expanded": resembling,
            "rejected": sum(t.rejected["leak"] for t in expander.tallies.values()),
        },
        "generator": generator_label,
        "seed": settings.seed,
        "examples": {name: tally.examples for name, tally in expander.tallies.items() if tally.examples},
        "notes": notes,
    }
