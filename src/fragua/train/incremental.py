"""Incremental training: which examples a new version trains on when it continues the last one.

A version's manifest names the dataset it was trained on; every record whose id is not in
that dataset is new. The new version trains on all new examples plus a random replay sample
of the older ones, so it learns the new facts without forgetting the old.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fragua.data.records import Record


@dataclass(frozen=True)
class IncrementalSelection:
    records: list[Record]
    new: int
    replayed: int
    older: int

    def summary(self) -> dict[str, int]:
        return {"new_examples": self.new, "replayed_examples": self.replayed, "older_examples": self.older}


def select_incremental(train: list[Record], known_ids: set[str], *, replay_ratio: float, seed: int) -> IncrementalSelection:
    """New records (id not in ``known_ids``) plus ``replay_ratio`` older records per new one."""
    new = [r for r in train if r.id not in known_ids]
    older = [r for r in train if r.id in known_ids]
    if not new:
        raise ValueError(
            f"incremental training found no new examples: all {len(train)} train examples were already in the production "
            "version's dataset; add data, or set train.incremental=false to retrain on everything"
        )
    replayed = random.Random(seed).sample(older, min(len(older), round(replay_ratio * len(new))))
    return IncrementalSelection(new + replayed, len(new), len(replayed), len(older))
