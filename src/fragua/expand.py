"""Train-split augmentation with provenance. The validation split is never touched."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from typing import Any

from .records import CHOICE_LETTERS, Record, RecordDraft, content_key, format_choices, multiple_choice_messages, record_id
from .settings import ExpandSettings


def permute_choices(record: Record, rng: random.Random, count: int) -> list[Record]:
    """Up to ``count`` reorderings of a multiple-choice record, the answer letter remapped."""
    if not record.choices or record.answer is None:
        return []
    options = record.choices
    correct = options[CHOICE_LETTERS.index(record.answer)]
    question = record.prompt_messages[-1].content.removesuffix(format_choices("", options))
    orders = [p for p in itertools.permutations(range(len(options))) if list(p) != list(range(len(options)))]
    if len(orders) > 5000:  # many options: sample orders instead of listing all n! of them
        orders = [tuple(rng.sample(range(len(options)), len(options))) for _ in range(count * 4)]
    rng.shuffle(orders)
    produced: list[Record] = []
    seen = set()
    for order in orders:
        if len(produced) >= count:
            break
        shuffled = [options[i] for i in order]
        if tuple(shuffled) in seen or shuffled == options:
            continue
        seen.add(tuple(shuffled))
        index = shuffled.index(correct)
        draft = RecordDraft(multiple_choice_messages(question, shuffled, index), choices=shuffled, answer=CHOICE_LETTERS[index])
        produced.append(
            Record(
                id=record_id(content_key(draft)),
                messages=draft.messages,
                choices=shuffled,
                answer=draft.answer,
                domain=record.domain,
                source=record.source,
                split=record.split,
                origin="mcq_permutation",
                meta={**record.meta, "parent_id": record.id, "group": record.group},
            )
        )
    return produced


def expand_train(train: list[Record], settings: ExpandSettings) -> tuple[list[Record], dict[str, Any]]:
    """Original train records plus augmentations toward ``expansion_factor``, and a report."""
    rng = random.Random(settings.seed)
    target = math.ceil(len(train) * settings.expansion_factor)
    needed = target - len(train)
    seen = {content_key(RecordDraft(r.messages, r.choices)) for r in train}
    added: list[Record] = []
    notes: list[str] = []
    if needed > 0 and "mcq_permutation" in settings.strategies:
        eligible = [r for r in train if r.choices and r.answer]
        if not eligible:
            notes.append("mcq_permutation: no multiple-choice rows in the train split")
        quota = math.ceil(needed / len(eligible)) if eligible else 0
        for record in eligible:
            for candidate in permute_choices(record, rng, quota):
                key = content_key(RecordDraft(candidate.messages, candidate.choices))
                if key in seen or len(added) >= needed:
                    continue
                seen.add(key)
                added.append(candidate)
    by_strategy = Counter(r.origin for r in added)
    by_domain_before = Counter(r.domain for r in train)
    by_domain_after = Counter(r.domain for r in train + added)
    report = {
        "target_factor": settings.expansion_factor,
        "achieved_factor": round((len(train) + len(added)) / len(train), 4) if train else 1.0,
        "train_before": len(train),
        "train_after": len(train) + len(added),
        "per_strategy": dict(by_strategy),
        "per_domain": {
            domain: {"before": by_domain_before[domain], "after": by_domain_after[domain],
                     "factor": round(by_domain_after[domain] / by_domain_before[domain], 4)}
            for domain in sorted(by_domain_before)
        },
        "examples": {strategy: [r.messages[0].content for r in added if r.origin == strategy][:3] for strategy in by_strategy},
        "notes": notes,
    }
    return train + added, report
