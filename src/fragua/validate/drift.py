"""The drift guard's reference: the best promoted version, compared with the candidate on the
validation questions both were scored on.

Validation splits grow as data arrives, so a version scored when it was validated knows only
some of today's questions. Each question is keyed by a hash of its content; scores are kept
per version and question (:class:`ScoreCache`), so a version is scored again only on the
questions it has not seen, and only the questions both sides have scores for are compared.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Mapping

from pydantic import BaseModel, Field, TypeAdapter

from fragua.settings import ValidateSettings
from fragua.validate.scoring import EvalItem, ItemResult, MetricSet, aggregate

_RESULTS = TypeAdapter(dict[str, ItemResult])


def question_key(item: EvalItem) -> str:
    """A hash of everything that decides an item's scores: prompt, reference, conversation, options."""
    content = {
        "prompt": [m.model_dump() for m in item.prompt],
        "reference": item.reference,
        "conversation": [m.model_dump() for m in item.conversation] if item.conversation else None,
        "choices": list(item.choices) if item.choices else None,
        "correct": item.correct,
    }
    if item.references is not None:  # only then: single-reference questions keep the keys their cached scores have
        content["references"] = list(item.references)
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def scoring_key(settings: ValidateSettings, max_length: int) -> str:
    """What else decides a score: generation budget, prompt length, metric options."""
    fields = settings.model_dump(include={"max_new_tokens", "bleu_tokenize", "numeric_percent_as_fraction", "numeric_tolerance"})
    if settings.squad_normalization != "fragua":  # only then: the default keeps the key scores were cached under before the setting existed
        fields["squad_normalization"] = settings.squad_normalization
    # Multiple-choice options are tokenised as lm-eval tokenises them since "choice-encoding": 2;
    # scores cached before that are not comparable.
    content = {**fields, "max_length": max_length, "choice-encoding": 2}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


class ScoreCache:
    """Per-question results of scored models under ``folder/<kind>/<name>/<scoring key>.json``
    (kind: ``versions`` or ``runs``), written whole and atomically."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = folder
        self.key = key

    def _path(self, kind: str, name: str) -> Path:
        return self.folder / kind / name / f"{self.key}.json"

    def load(self, kind: str, name: str) -> dict[str, ItemResult]:
        path = self._path(kind, name)
        return _RESULTS.validate_json(path.read_bytes()) if path.is_file() else {}

    def save(self, kind: str, name: str, results: Mapping[str, ItemResult], *, merge: bool = True) -> None:
        path = self._path(kind, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**(self.load(kind, name) if merge else {}), **results}
        handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(handle, "wb") as out:
            out.write(_RESULTS.dump_json(merged))
        os.replace(staging, path)


class ReferenceComparison(BaseModel):
    """The candidate and the reference version on the questions both were scored on."""

    version: str
    pinned: bool = Field(description="True when the version is validate.reference_version, False when it is the best promoted one.")
    shared: int = Field(description="Validation questions both were scored on.")
    candidate: MetricSet
    reference: MetricSet


def compare_on_shared(
    version: str, candidate: Mapping[str, ItemResult], reference: Mapping[str, ItemResult], *, pinned: bool, bleu_tokenize: str = "13a"
) -> ReferenceComparison | None:
    """Both sides' scores on the questions both have; None when they share none."""
    shared = [key for key in candidate if key in reference]
    if not shared:
        return None
    return ReferenceComparison(
        version=version,
        pinned=pinned,
        shared=len(shared),
        candidate=aggregate([candidate[k] for k in shared], bleu_tokenize=bleu_tokenize),
        reference=aggregate([reference[k] for k in shared], bleu_tokenize=bleu_tokenize),
    )


def best_reference(
    candidate: Mapping[str, ItemResult], references: Mapping[str, Mapping[str, ItemResult]], settings: ValidateSettings, *, pinned: bool = False
) -> ReferenceComparison | None:
    """Among ``references`` (version -> its scores, oldest first), the version with the best
    primary metric on the questions it shares with the candidate; the newer one on a tie."""
    best: ReferenceComparison | None = None
    for version, scores in references.items():
        comparison = compare_on_shared(version, candidate, scores, pinned=pinned, bleu_tokenize=settings.bleu_tokenize)
        if comparison is None:
            continue
        value = comparison.reference.value(settings.primary_metric)
        if value is None:
            continue
        if best is None or value >= (best.reference.value(settings.primary_metric) or 0.0):
            best = comparison
    return best
