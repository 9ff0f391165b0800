"""A reference-grounded judge: a model reads each answer against the reference and says whether
it is correct, partially correct or incorrect, and which facts of the reference it misses; the
same judge compares two answers to one question (:mod:`fragua.validate.pairwise`).

The judge is any :class:`JudgeBackend`: a local model run with Fragua's own generation, or an
OpenAI-compatible endpoint (:mod:`fragua.validate.judge_backends`). The rubric is fixed and
versioned (:data:`RUBRIC_VERSION`), written in the question's language (English or Spanish),
and asks for one JSON object; a reply that is not one is asked again once, then the step fails
with the reply quoted — an unusable judge never turns into a score of 0. Verdicts are cached
by a hash of (judge, rubric version, question, references, answer), so validating again costs
nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from fragua.data.augment import detect_language

# Bump when a rubric's wording or the reply format changes: cached verdicts of the old one stop applying.
RUBRIC_VERSION = "1"
VERDICT_SCORES = {"correct": 1.0, "partially correct": 0.5, "incorrect": 0.0}
Verdict = Literal["correct", "partially correct", "incorrect"]
Winner = Literal["A", "B", "tie"]
REPLY_SHOWN_CHARS = 300

ChatMessage = dict[str, str]
Reply = TypeVar("Reply", bound=BaseModel)


class JudgeError(RuntimeError):
    """The judge cannot be reached, or answered in a form that cannot be read."""


class JudgeBackend(Protocol):
    """A model that answers chat prompts deterministically (temperature 0 / greedy)."""

    identity: str  # what decides its verdicts (model and where it runs): part of every cache key
    label: str  # how messages name it

    def complete(self, prompts: Sequence[list[ChatMessage]]) -> list[str]: ...


class JudgeVerdict(BaseModel):
    verdict: Verdict = Field(description="correct, partially correct or incorrect, against the reference.")
    missing: list[str] = Field(default_factory=list, description="Facts of the reference the answer lacks or contradicts.")

    @property
    def score(self) -> float:
        return VERDICT_SCORES[self.verdict]


class PairVerdict(BaseModel):
    winner: Winner = Field(description="The better answer: A, B, or tie.")


@dataclass(frozen=True)
class JudgeItem:
    """One answer to judge: the question as the model saw it, every correct answer, the answer."""

    question: str
    references: tuple[str, ...]
    answer: str

    @property
    def language(self) -> str:
        return detect_language(self.question + " " + " ".join(self.references))


# The rubrics ------------------------------------------------------------------------------

_VERDICT_RUBRIC = {
    "en": (
        "You grade answers against a reference. Judge meaning, not wording: a paraphrase of the reference is correct; "
        "an answer that shares words with the reference but states something else is incorrect.\n"
        "- correct: it states every fact of the reference that the question asks for, and nothing that contradicts it.\n"
        "- partially correct: it states some of those facts and contradicts none, or adds a wrong detail to a right core.\n"
        "- incorrect: it misses the core of the reference, contradicts it, or does not answer.\n"
        "If the reference says the question cannot be answered, an answer that declines to answer is correct.\n"
        'Reply with one JSON object and nothing else: {"verdict": "correct" | "partially correct" | "incorrect", '
        '"missing": [the facts of the reference the answer lacks or contradicts, in English; [] when none]}'
    ),
    "es": (
        "Calificas respuestas frente a una referencia. Juzga el significado, no la redacción: una paráfrasis de la "
        "referencia es correcta; una respuesta que comparte palabras con la referencia pero dice otra cosa es incorrecta.\n"
        "- correct: recoge todos los hechos de la referencia que pide la pregunta y nada que la contradiga.\n"
        "- partially correct: recoge parte de esos hechos sin contradecir ninguno, o añade un detalle erróneo a un núcleo acertado.\n"
        "- incorrect: no recoge lo esencial de la referencia, la contradice o no responde.\n"
        "Si la referencia dice que la pregunta no tiene respuesta, una respuesta que declina responder es correcta.\n"
        'Responde con un único objeto JSON y nada más: {"verdict": "correct" | "partially correct" | "incorrect", '
        '"missing": [los hechos de la referencia que faltan o se contradicen, en español; [] si no falta ninguno]}'
    ),
}
_PAIR_RUBRIC = {
    "en": (
        "You compare two answers to one question against a reference. The better answer is the one whose meaning "
        "agrees more fully with the reference; wording, length and style do not count. Say tie when both are equally "
        "right or equally wrong.\n"
        'Reply with one JSON object and nothing else: {"winner": "A" | "B" | "tie"}'
    ),
    "es": (
        "Comparas dos respuestas a una pregunta frente a una referencia. Es mejor la respuesta cuyo significado coincide "
        "más plenamente con la referencia; la redacción, la longitud y el estilo no cuentan. Di tie cuando ambas sean "
        "igual de correctas o igual de erróneas.\n"
        'Responde con un único objeto JSON y nada más: {"winner": "A" | "B" | "tie"}'
    ),
}
_LABELS = {
    "en": {"question": "Question", "reference": "Reference", "references": "References (any one is correct)", "answer": "Answer"},
    "es": {"question": "Pregunta", "reference": "Referencia", "references": "Referencias (cualquiera es correcta)", "answer": "Respuesta"},
}


def _reference_block(item: JudgeItem, labels: dict[str, str]) -> str:
    if len(item.references) == 1:
        return f"{labels['reference']}:\n{item.references[0]}"
    return f"{labels['references']}:\n" + "\n".join(f"- {reference}" for reference in item.references)


def verdict_prompt(item: JudgeItem) -> list[ChatMessage]:
    """The rubric as the system message, question, reference(s) and answer as the user's."""
    language = item.language
    labels = _LABELS[language]
    body = f"{labels['question']}:\n{item.question}\n\n{_reference_block(item, labels)}\n\n{labels['answer']}:\n{item.answer}"
    return [{"role": "system", "content": _VERDICT_RUBRIC[language]}, {"role": "user", "content": body}]


def pair_prompt(item: JudgeItem, first: str, second: str) -> list[ChatMessage]:
    """The pairwise rubric; ``first`` is answer A, ``second`` answer B (``item.answer`` is unused)."""
    language = item.language
    labels = _LABELS[language]
    body = (
        f"{labels['question']}:\n{item.question}\n\n{_reference_block(item, labels)}\n\n"
        f"{labels['answer']} A:\n{first}\n\n{labels['answer']} B:\n{second}"
    )
    return [{"role": "system", "content": _PAIR_RUBRIC[language]}, {"role": "user", "content": body}]


# Reading replies ---------------------------------------------------------------------------

def parse_reply(text: str, model: type[Reply]) -> Reply:
    """The one JSON object of a reply, from its first '{' to its last '}' (a ```json fence or a
    lead-in sentence around it is ignored), with the rubric's fields; ValueError otherwise."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise ValueError("no JSON object in the reply")
    try:
        return model.model_validate(json.loads(text[start: end + 1]))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ValueError(" ".join(str(exc).split())) from exc


# The cache ---------------------------------------------------------------------------------

_ENTRIES = TypeAdapter(dict[str, dict[str, Any]])


class VerdictCache:
    """Parsed replies under ``folder/<hash of judge identity and rubric version>.json``, keyed by
    a hash of what was asked; written whole and atomically after each batch of new verdicts,
    merged with what another judge object saved meanwhile."""

    def __init__(self, folder: Path, identity: str) -> None:
        digest = hashlib.sha256(json.dumps([identity, RUBRIC_VERSION]).encode()).hexdigest()[:16]
        self.path = folder / f"{digest}.json"
        self.entries = self._stored()

    def _stored(self) -> dict[str, dict[str, Any]]:
        return _ENTRIES.validate_json(self.path.read_bytes()) if self.path.is_file() else {}

    @staticmethod
    def key(kind: str, item: JudgeItem, *answers: str) -> str:
        return hashlib.sha256(json.dumps([kind, item.question, list(item.references), list(answers)]).encode()).hexdigest()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries = {**self._stored(), **self.entries}
        handle, staging = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        with os.fdopen(handle, "wb") as out:
            out.write(_ENTRIES.dump_json(self.entries))
        os.replace(staging, self.path)


class Judge:
    """A backend and its verdict cache."""

    def __init__(self, backend: JudgeBackend, cache_folder: Path) -> None:
        self.backend = backend
        self.cache = VerdictCache(cache_folder, backend.identity)

    def _ask(self, keys: list[str], prompts: list[list[ChatMessage]], model: type[Reply], what: Callable[[int], str]) -> list[Reply]:
        """Cached replies for ``keys``; the rest asked in one batch, the unreadable ones once more."""
        results: dict[int, Reply] = {i: model.model_validate(self.cache.entries[k]) for i, k in enumerate(keys) if k in self.cache.entries}
        pending = [i for i in range(len(keys)) if i not in results]
        if not pending:
            return [results[i] for i in range(len(keys))]
        failures: dict[int, tuple[str, str]] = {}
        for _attempt in range(2):
            if not pending:
                break
            replies = self.backend.complete([prompts[i] for i in pending])
            if len(replies) != len(pending):
                raise JudgeError(f"judge {self.backend.label} returned {len(replies)} replies for {len(pending)} prompts")
            failures = {}
            for i, reply in zip(pending, replies):
                try:
                    results[i] = parse_reply(reply, model)
                    self.cache.entries[keys[i]] = results[i].model_dump()
                except ValueError as exc:
                    failures[i] = (reply, str(exc))
            pending = sorted(failures)
        self.cache.save()
        if failures:
            first = min(failures)
            reply, reason = failures[first]
            shown = reply if len(reply) <= REPLY_SHOWN_CHARS else reply[:REPLY_SHOWN_CHARS] + "…"
            raise JudgeError(
                f"judge {self.backend.label} answered {len(failures)} of {len(keys)} prompt(s) unreadably twice "
                f"(rubric v{RUBRIC_VERSION} asks for one JSON object); first, for {what(first)}: {reason}; reply: {shown!r}. "
                "Choose a judge model that follows instructions (validate.judge.model)."
            )
        return [results[i] for i in range(len(keys))]

    def verdicts(self, items: Sequence[JudgeItem]) -> list[JudgeVerdict]:
        """The verdict on each item's answer."""
        keys = [VerdictCache.key("verdict", item, item.answer) for item in items]
        return self._ask(keys, [verdict_prompt(item) for item in items], JudgeVerdict, lambda i: f"question {_clip(items[i].question)!r}")

    def preferences(self, items: Sequence[JudgeItem], firsts: Sequence[str], seconds: Sequence[str]) -> list[Winner]:
        """For each item, which of answer A (``firsts``) and answer B (``seconds``) is better, or tie."""
        keys = [VerdictCache.key("pair", item, first, second) for item, first, second in zip(items, firsts, seconds)]
        prompts = [pair_prompt(item, first, second) for item, first, second in zip(items, firsts, seconds)]
        replies = self._ask(keys, prompts, PairVerdict, lambda i: f"the comparison on question {_clip(items[i].question)!r}")
        return [reply.winner for reply in replies]


def _clip(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"
