"""Learning and forgetting on the team's own data: did the candidate learn the examples it was
trained on, and, next to the version it follows, did it learn the new examples and keep the
older ones?

Each group is a small fixed sample (seeded, drawn from the records sorted by id, so the same
data gives the same sample whatever order it was read in) scored on the base model, the
version the candidate follows and the candidate, with the same scoring as validation.
"""

from __future__ import annotations

import random
from typing import Iterable, Sequence

from pydantic import BaseModel, Field

from fragua.data.records import Record
from fragua.validate.scoring import ItemResult, MetricSet, aggregate

# Group name -> what it holds, for the report.
GROUPS = {
    "trained": "examples the candidate trained on",
    "new": "train examples the previous version's dataset did not have",
    "older": "train examples the previous version also trained on",
}
MODELS = ("base", "previous", "candidate")


def fixed_sample(records: Iterable[Record], count: int, seed: int) -> list[Record]:
    """``count`` records (all when fewer) drawn with ``seed`` from the records sorted by id."""
    ordered = sorted(records, key=lambda record: record.id)
    return random.Random(seed).sample(ordered, min(count, len(ordered)))


def retention_groups(
    trained: Sequence[Record],
    train: Sequence[Record],
    *,
    previous_dataset: set[str] | None,
    previous_train: set[str] | None,
    count: int,
    seed: int,
) -> dict[str, list[Record]]:
    """The samples of each group: ``trained`` always; with the previous version's dataset
    (ids of all its splits, and of its train split), ``new`` and ``older`` among the
    candidate's train split. Empty groups are left out."""
    groups = {"trained": fixed_sample(trained, count, seed)}
    if previous_dataset is not None and previous_train is not None:
        groups["new"] = fixed_sample((r for r in train if r.id not in previous_dataset), count, seed)
        groups["older"] = fixed_sample((r for r in train if r.id in previous_train), count, seed)
    return {name: records for name, records in groups.items() if records}


class RetentionGroup(BaseModel):
    name: str = Field(description="trained, new or older (see GROUPS).")
    description: str
    n: int = Field(description="Examples in the sample.")
    scores: dict[str, MetricSet] = Field(description="Model (base, previous, candidate) -> its scores on the sample.")


class Retention(BaseModel):
    """The learning/forgetting table of a candidate."""

    previous_version: str | None = Field(None, description="The version the candidate follows: the one it continued, else production.")
    incremental: bool = Field(False, description="The candidate continued previous_version's weights (train.incremental).")
    seed: int
    groups: list[RetentionGroup]


def retention_table(
    groups: dict[str, list[str]],
    results: dict[str, dict[str, ItemResult]],
    *,
    previous_version: str | None,
    incremental: bool,
    seed: int,
    bleu_tokenize: str = "13a",
) -> Retention:
    """Scores per group and model from per-question results (model -> question key -> result);
    a model lacking a question (a deleted version with only some cached scores) is scored on
    the rest of the group."""
    rows = []
    for name, keys in groups.items():
        scores = {}
        for model in MODELS:
            present = [results[model][key] for key in keys if key in results.get(model, {})]
            if present:
                scores[model] = aggregate(present, bleu_tokenize=bleu_tokenize)
        rows.append(RetentionGroup(name=name, description=GROUPS[name], n=len(keys), scores=scores))
    return Retention(previous_version=previous_version, incremental=incremental, seed=seed, groups=rows)
