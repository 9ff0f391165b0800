"""Every gold answer a question carries, and the official SQuAD rules for scoring against them.

A record's ``reference`` is the one answer it trains on; a SQuAD question may carry several
correct answers (``meta.answers``, kept by ingest) or none (SQuAD v2 unanswerable). The
official SQuAD evaluation scores a prediction against the best of all gold answers, and scores
an unanswerable question as right when the model abstains. :func:`gold_answers` is the one
place that reads a record's answers, so a new multi-reference format is taught here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from fragua.validate.metrics import exact_match, normalize_answer, token_f1

Normalization = Literal["fragua", "official"]


def _answer_texts(answers: Any) -> list[str] | None:
    """The texts of SQuAD ``answers``: ``{text: [...], answer_start: [...]}`` (HF rows) or a
    list of ``{text, answer_start}`` (the nested file); None for anything else."""
    if isinstance(answers, Mapping) and isinstance(answers.get("text"), list) and all(isinstance(t, str) for t in answers["text"]):
        return list(answers["text"])
    if isinstance(answers, list) and all(isinstance(answer, Mapping) and isinstance(answer.get("text"), str) for answer in answers):
        return [answer["text"] for answer in answers]
    return None


def gold_answers(reference: str | None, meta: Mapping[str, Any]) -> tuple[str, ...] | None:
    """All correct answers of a question, the reference first: a SQuAD row's every answer
    text; ``()`` for an unanswerable SQuAD v2 question (``is_impossible``, or no answer text);
    None when the question carries no more than its reference."""
    texts = _answer_texts(meta.get("answers"))
    if texts is None:
        return None
    if meta.get("is_impossible") is True or not any(text.strip() for text in texts):
        return ()
    return tuple(dict.fromkeys([*([reference] if reference is not None else []), *(text for text in texts if text.strip())]))


def is_abstention(prediction: str, no_answer: str | None, *, ascii_only: bool = False) -> bool:
    """An answer that declines to answer: empty, or the no-answer target the model trains on
    (``data.no_answer_text`` when the question was ingested), both after answer normalisation."""
    text = normalize_answer(prediction, ascii_only=ascii_only)
    return not text or (no_answer is not None and text == normalize_answer(no_answer, ascii_only=ascii_only))


def best_scores(prediction: str, reference: str, references: Sequence[str] | None, *, normalization: Normalization = "fragua") -> tuple[float, float]:
    """(exact match, token F1) by the official SQuAD rules: the best over every gold answer
    that normalises to something; a question without one (unanswerable) has the gold answer
    "", so an abstention scores 1 and anything else 0. ``references`` None: ``reference`` alone."""
    ascii_only = normalization == "official"
    if references is None:
        return exact_match(prediction, reference, ascii_only=ascii_only), token_f1(prediction, reference, ascii_only=ascii_only)
    golds = [gold for gold in references if normalize_answer(gold, ascii_only=ascii_only)]
    if not golds:
        # The reference of an unanswerable question is its no-answer target.
        answer = "" if is_abstention(prediction, reference, ascii_only=ascii_only) else prediction
        return exact_match(answer, "", ascii_only=ascii_only), token_f1(answer, "", ascii_only=ascii_only)
    return (
        max(exact_match(prediction, gold, ascii_only=ascii_only) for gold in golds),
        max(token_f1(prediction, gold, ascii_only=ascii_only) for gold in golds),
    )
