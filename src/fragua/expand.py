"""Train-split expansion toward ``expand.expansion_factor``, with provenance and no leakage.

Only train rows are parents, and every added row inherits its parent's group and split,
so the validation and test splits are never expanded and never gain a twin of a train row.
The rows to add are shared among the enabled strategies by weight; a strategy that runs
out of variants leaves its share to the others. Each strategy walks its parents in a
seeded order, one variant per parent per round, so additions spread over the data
instead of piling up on a few rows.

Every candidate goes through ingest's own checks (:mod:`fragua.quality`: lengths and the
quality score), exact dedupe against the train split and what was added so far, and the
leakage guard: a train row whose question nearly repeats a validation or test question is
not expanded, and model-written rows are compared with those questions too. Model-written
rows also go through near-duplicate removal when ``data.near_dedupe`` is on (template
variants are near-duplicates of their parent by design, so it does not apply to them).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from . import augment
from .adapters import Adapted, RowErrors
from .augment import Rejected, bare_question
from .quality import NearDuplicates, apply_quality, check_lengths, message_texts
from .records import Message, Record
from .settings import MODEL_STRATEGIES, DataSettings, ExpandSettings
from .textops import ROLE_CODES, conversation_ids, hex_ids, normalise

# (prompts, seed) -> one generated text per prompt.
Generator = Callable[[Sequence[Sequence[Message]], int], list[str]]

LEAKAGE_NUM_PERM = 128
LEAKAGE_LSH_MARGIN = 0.25
_WORDS = re.compile(r"\w+")
EXAMPLES_PER_STRATEGY = 3

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


@dataclass
class Expansion:
    records: list[Record]  # the train split as given, then the added rows
    report: dict[str, Any]
    rejected: list[dict[str, Any]]  # quarantine entries of candidates that failed a check


@dataclass
class Candidate:
    record: Record
    parent: Record
    question: str | None = None  # model-written question, checked against held-out questions


def _adapted(records: Sequence[Record]) -> Adapted:
    """Records in the columnar shape ingest's checks work on."""
    counts = [len(r.messages) for r in records]
    offsets = np.zeros(len(records) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Adapted(
        len(records),
        np.array([ROLE_CODES[m.role] for r in records for m in r.messages], dtype=np.uint8),
        pa.array([m.content for r in records for m in r.messages], pa.string()),
        offsets,
        RowErrors(len(records)),
    )


def content_ids(records: Sequence[Record]) -> list[str]:
    """What exact dedupe compares (ingest's duplicate key), whatever ids the records carry."""
    if not records:
        return []
    adapted = _adapted(records)
    texts = message_texts(adapted)
    return hex_ids(conversation_ids(texts.data, texts.offsets, adapted.role_codes, adapted.message_offsets)).to_pylist()


def screen(records: Sequence[Record], data: DataSettings) -> tuple[list[str], RowErrors]:
    """Ingest's length and quality checks over records, and their content ids (what dedupe compares)."""
    adapted = _adapted(records)
    texts = message_texts(adapted)
    check_lengths(adapted, texts, data)
    if data.quality_threshold > 0:
        apply_quality(adapted, texts, data.quality_threshold)
    ids = conversation_ids(texts.data, texts.offsets, adapted.role_codes, adapted.message_offsets)
    return hex_ids(ids).to_pylist(), adapted.errors


class HeldOutGuard:
    """Validation and test rows: their content ids, normalised questions and a MinHash index
    of their questions' word sets, to keep copies and rewordings of them out of train."""

    def __init__(self, held_out: Sequence[Record], threshold: float) -> None:
        self.ids = set(content_ids(held_out))
        self.threshold = threshold
        self.questions: dict[str, str] = {}
        self.words: dict[str, frozenset[str]] = {}
        # MinHash estimates of small word sets are noisy and LSH misses some pairs near its
        # threshold: the index finds candidates well below the threshold and the exact
        # Jaccard similarity of the word sets decides.
        self.index = NearDuplicates(max(0.2, threshold - LEAKAGE_LSH_MARGIN), LEAKAGE_NUM_PERM, 1)
        for record in held_out:
            question = bare_question(record)
            self.questions.setdefault(normalise(question), record.id)
            self.words[record.id] = _word_set(question)
            self.index.add(question.lower(), record.id)

    def match(self, question: str) -> str | None:
        """Why ``question`` counts as a held-out question, or None."""
        if (same := self.questions.get(normalise(question))) is not None:
            return f"same question as held-out record {same}"
        words = _word_set(question)
        for ident, _ in self.index.similar(question.lower()):
            theirs = self.words[ident]
            similarity = len(words & theirs) / len(words | theirs) if words | theirs else 0.0
            if similarity >= self.threshold:
                return f"question resembles held-out record {ident} (word-set Jaccard similarity {similarity:.2f} >= expand.leakage_threshold={self.threshold})"
        return None


def _word_set(text: str) -> frozenset[str]:
    return frozenset(_WORDS.findall(text.lower()))


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

    def accept(self, strategy: str, candidates: list[Candidate], *, model_written: bool) -> int:
        """Check candidates in order and keep those that pass; returns how many were kept."""
        if not candidates:
            return 0
        tally = self.tallies[strategy]
        ids, errors = screen([c.record for c in candidates], self.data)
        near = self.near_index() if model_written else None
        kept = 0
        for row, (candidate, ident) in enumerate(zip(candidates, ids)):
            record = candidate.record
            dumped = record.model_dump(mode="json")
            if not errors.ok[row]:
                self.reject(strategy, dumped, candidate.parent, errors.kind(row), errors.reasons[row])
            elif ident in self.guard.ids:
                self.reject(strategy, dumped, candidate.parent, "leak", "identical to a held-out (validation or test) record")
            elif candidate.question is not None and (why := self.guard.match(candidate.question)):
                self.reject(strategy, dumped, candidate.parent, "leak", why)
            elif ident in self.seen:
                tally.duplicates += 1
            elif near is not None and (match := near.check(_near_text(record), ident)):
                self.reject(strategy, dumped, candidate.parent, "near_duplicate",
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
    """Variants of one rule-based strategy, one per parent per round, parents in a seeded order."""

    def __init__(self, expander: _Expander, strategy: str, parents: list[Record], rng: random.Random, limit: int) -> None:
        self.expander = expander
        self.strategy = strategy
        self.function = RULES[strategy]
        if strategy == "squad_closed_book":
            self.function = partial(self.function, no_answer_text=expander.data.no_answer_text)
        self.rng = rng
        self.limit = limit
        self.order = list(parents)
        rng.shuffle(self.order)
        self.stream = self._rounds()
        self.exhausted = False

    def _rounds(self) -> Iterator[Candidate]:
        variants: dict[int, list[Record]] = {}
        active = list(range(len(self.order)))
        turn = 0
        while active:
            still = []
            for index in active:
                if index not in variants:
                    variants[index] = self.function(self.order[index], self.rng, self.limit)
                if turn < len(variants[index]):
                    yield Candidate(variants[index][turn], self.order[index])
                    still.append(index)
                else:
                    del variants[index]
            active = still
            turn += 1

    def take(self, count: int) -> int:
        kept = 0
        while kept < count:
            batch = list(islice(self.stream, count - kept))
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
            kept += self.expander.accept(self.strategy, candidates, model_written=True)
        return kept


def _eligible(strategy: str, record: Record, data: DataSettings) -> bool:
    probe = random.Random(0)
    if strategy in RULES:
        function = RULES[strategy]
        if strategy == "squad_closed_book":
            return bool(function(record, probe, 1, no_answer_text=data.no_answer_text))
        return bool(function(record, probe, 1))
    return PROMPTS[strategy][0](record) is not None


def _fill(expander: _Expander, producers: dict[tuple[str, str], _RuleProducer | _ModelProducer], count: int) -> int:
    """Add up to ``count`` rows from ``producers``, shared by strategy weight; a producer that
    falls short of its share is closed and its shortfall shared among the others."""
    added = 0
    while added < count:
        open_keys = [key for key, producer in producers.items() if not producer.exhausted]
        if not open_keys:
            break
        quotas = _apportion(count - added, {key: expander.tallies[key[1]].weight for key in open_keys})
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
) -> Expansion:
    """The train split plus augmentations toward ``expansion_factor``, what was rejected, and a report.

    ``held_out``: the validation and test records, kept out of what is added.
    ``generator``: writes text for the model-based strategies (required when one is enabled).
    """
    data = data or DataSettings()
    if settings.model_strategies and generator is None:
        raise ValueError(f"expand.strategies {settings.model_strategies} need a generator model (expand.generation.model)")
    train = list(train)
    guard = HeldOutGuard(held_out, settings.leakage_threshold)
    expander = _Expander(train, settings, data, guard)
    needed = max(0, math.ceil(len(train) * settings.expansion_factor - 1e-9) - len(train))
    notes: list[str] = []
    resembling = [r for r in train if r.origin == "original" and guard.match(bare_question(r))]
    skipped = {r.id for r in resembling}
    parents = [r for r in train if r.origin == "original" and r.id not in skipped]
    if resembling:
        notes.append(f"{len(resembling)} train rows ask (nearly) the same question as a validation or test row; they were not expanded")

    producers: dict[tuple[str, str], _RuleProducer | _ModelProducer] = {}
    by_domain: dict[str, list[Record]] = defaultdict(list)
    for record in parents:
        by_domain[record.domain].append(record)
    for strategy in settings.strategies:
        for domain in sorted(by_domain):
            eligible = [r for r in by_domain[domain] if _eligible(strategy, r, data)]
            expander.tallies[strategy].eligible += len(eligible)
            if not eligible:
                continue
            rng = random.Random(f"{settings.seed}:{domain}:{strategy}")
            if strategy in RULES:
                producers[domain, strategy] = _RuleProducer(expander, strategy, eligible, rng, max(1, math.ceil(needed / len(eligible))))
            else:
                assert generator is not None
                producers[domain, strategy] = _ModelProducer(expander, strategy, eligible, rng, generator)
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
    report = _report(train, expander, settings, needed, guard, len(resembling), notes, generator_label)
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
