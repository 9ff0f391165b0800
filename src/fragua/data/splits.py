"""Train/validation/test assignment by a hash of each row's group.

A group's split depends only on the group and the seed, never on the other rows, so a
group keeps its split as the data grows; all rows of a group (a SQuAD paragraph's
questions, a HEAD-QA question, an explicit ``group`` field, later the permutations of one
multiple-choice question) share it. Every domain is sampled at the same rate, so each
domain's split shares converge to the fractions (stratified in expectation); exact
per-domain quotas would need groups to move between splits as data arrives, which this
refuses to do. The validation range comes first, so adding a test split later only takes
groups from train.
"""

from __future__ import annotations

import numpy as np
import xxhash

SPLITS = ("train", "validation", "test")
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) & _MASK


def group_hash(group: str) -> int:
    return xxhash.xxh3_64_intdigest(group.encode())


def split_codes(group_hashes: np.ndarray, seed: int, validation_fraction: float, test_fraction: float) -> np.ndarray:
    """0 train, 1 validation, 2 test for each group hash (uint64)."""
    salt = _splitmix64(np.array([seed], dtype=np.uint64))[0]
    position = _splitmix64(group_hashes.astype(np.uint64) ^ salt) / np.float64(2**64)
    codes = np.zeros(len(group_hashes), dtype=np.int8)
    codes[position < validation_fraction] = 1
    codes[(position >= validation_fraction) & (position < validation_fraction + test_fraction)] = 2
    return codes


def assign_split(group: str, seed: int, validation_fraction: float, test_fraction: float = 0.0) -> str:
    """The split of an explicit group key (rows without one use their record id's hash)."""
    code = split_codes(np.array([group_hash(group)], dtype=np.uint64), seed, validation_fraction, test_fraction)[0]
    return SPLITS[code]
