"""Expansion candidates through ingest's own checks, and the guard that keeps held-out questions out of train.

A candidate (an added row and its parent) gets ingest's content id (what exact dedupe
compares) and its length and quality verdicts (:mod:`fragua.data.quality`). The
:class:`HeldOutGuard` holds the validation and test rows' ids and questions: a train row
that (nearly) asks one of them is not expanded, and a model-written question that does is rejected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from fragua.data.augment import bare_question
from fragua.data.formats.columnar import Adapted, RowErrors
from fragua.data.quality import NearDuplicates, apply_quality, check_lengths, message_texts
from fragua.data.records import Record
from fragua.data.textops import ROLE_CODES, conversation_ids, hex_ids, normalise
from fragua.settings import DataSettings

LEAKAGE_NUM_PERM = 128
LEAKAGE_LSH_MARGIN = 0.25
_WORDS = re.compile(r"\w+")


@dataclass
@dataclass
class Candidate:
    record: Record
    parent: Record
    question: str | None = None  # model-written question, checked against held-out questions
    ident: str = ""  # content id, what exact dedupe compares
    problem: tuple[str, str] | None = None  # (kind, reason) of a failed length or quality check


def screened(candidates: list[Candidate], data: DataSettings) -> list[Candidate]:
    """``candidates`` with their content ids and ingest's length and quality verdicts filled in."""
    if candidates:
        ids, errors = screen([c.record for c in candidates], data)
        for row, (candidate, ident) in enumerate(zip(candidates, ids)):
            candidate.ident = ident
            candidate.problem = None if errors.ok[row] else (errors.kind(row), errors.reasons[row])
    return candidates


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
