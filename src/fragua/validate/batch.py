"""Batch evaluation: answer a predefined question set with one model and score what can be scored.

Questions come in any row format ingest understands (alpaca, prompt/completion, chat,
multiple choice) or as plain ``{question, answer?, choices?, domain?, category?, id?}`` rows;
rows with a reference answer are scored like validation (greedy answers, the same metrics),
rows without one are only answered. Each row's domain is decided as ingest decides it (its
``domain`` field, ``data.routing``, its category such as HEAD-QA's, ``data.default_domain``).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
from pydantic import BaseModel, Field

from fragua.data.formats import detect_format
from fragua.data.formats.adapt import adapt_row
from fragua.data.readers import read_batches
from fragua.data.records import CHOICE_LETTERS, Message, RowError, answer_index, format_choices
from fragua.data.routing import route, rules_for_source
from fragua.data.sources import IngestError, Source, expand_sources
from fragua.inference.choice import ModelChoice, load_model
from fragua.settings import DataSettings, Settings, SourceSpec
from fragua.validate.references import gold_answers
from fragua.validate.scoring import EvalItem, ItemResult, MetricSet, score_items, summarize

MAX_LISTED_ERRORS = 20
QUESTION_BATCH_ROWS = 4096
_LOADING = threading.Lock()


class BatchResult(BaseModel):
    model: ModelChoice
    questions_file: str
    created_at: str
    settings: dict[str, Any] = Field(description="How answers were produced and scored.")
    overall: MetricSet
    per_domain: dict[str, MetricSet]
    items: list[ItemResult]


def _plain_text(row: dict[str, Any], key: str) -> str:
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(f"field '{key}' must be text or a number, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise RowError(f"field '{key}' is empty")
    return text


def _own_domain(row: dict[str, Any]) -> str | None:
    value = row.get("domain")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RowError("field 'domain' must be a non-empty string")
    return value.strip()


def _category(row: dict[str, Any]) -> str | None:
    value = row.get("category")
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def question_item(row: dict[str, Any], default_id: str, data: DataSettings) -> tuple[EvalItem, str | None, str | None]:
    """One question file row as an evaluation item (in ``data.default_domain`` until routed), its
    own domain and its category; RowError says why a row cannot be one."""
    ident = str(row.get("id", default_id))
    fmt = detect_format(row)
    if fmt is not None:
        draft = adapt_row(row, fmt, no_answer_text=data.no_answer_text)
        correct = answer_index(draft.answer, len(draft.choices)) if draft.choices else None
        reference = draft.messages[-1].content
        item = EvalItem(
            id=ident, domain=data.default_domain, prompt=tuple(draft.messages[:-1]), reference=reference,
            references=gold_answers(reference, draft.meta), conversation=tuple(draft.messages),
            choices=tuple(draft.choices) if draft.choices else None, correct=correct,
        )
        return item, draft.domain, draft.category
    return _plain_item(row, ident, data.default_domain), _own_domain(row), _category(row)


def _plain_item(row: dict[str, Any], ident: str, domain: str) -> EvalItem:
    if "question" not in row:
        raise RowError(f"no 'question' field and no known format (keys: {sorted(row)}); see the README's input formats")
    question = _plain_text(row, "question")
    choices = row.get("choices")
    if choices is not None:
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(CHOICE_LETTERS) or not all(isinstance(c, str) and c.strip() for c in choices):
            raise RowError("field 'choices' must be a list of 2 to 26 non-empty options")
        return EvalItem(id=ident, domain=domain, prompt=(Message(role="user", content=format_choices(question, choices)),), choices=tuple(choices))
    prompt = (Message(role="user", content=question),)
    if row.get("answer") is None:
        return EvalItem(id=ident, domain=domain, prompt=prompt)
    answer = _plain_text(row, "answer")
    return EvalItem(
        id=ident, domain=domain, prompt=prompt, reference=answer,
        conversation=(*prompt, Message(role="assistant", content=answer)),
    )


def _located_rows(source: Source) -> Iterator[tuple[str, dict[str, Any] | RowError]]:
    """Every row of a source with its location, in file order, as ingest reads it."""
    for batch in read_batches(source, QUESTION_BATCH_ROWS):
        for location, error, _ in batch.failures:
            yield location, error
        locations = batch.locations.to_pylist() if batch.locations is not None else []
        for index, table in enumerate(batch.tables):
            positions = batch.positions[index] if batch.positions is not None else range(table.num_rows)
            for position, row in zip(positions, table.to_pylist()):
                # Arrow fills a column some rows lack with nulls; those keys were never given.
                yield locations[int(position)], {key: value for key, value in row.items() if value is not None}


def _routed(items: list[tuple[EvalItem, str | None, str | None]], source: Source, data: DataSettings) -> list[EvalItem]:
    """The items in the domains ingest would give their rows (:func:`fragua.data.routing.route`)."""
    if not items:
        return []
    rules = rules_for_source(data.routing, source.name)
    prompts = ["\n".join(m.content for m in item.prompt if m.role == "user") for item, _, _ in items]
    domains = route(
        len(items), rules,
        row_domain=pa.array([domain for _, domain, _ in items], pa.string()),
        category=pa.array([category for _, _, category in items], pa.string()),
        prompt=pa.array(prompts, pa.string()),
        source_domain=source.spec.domain,
        default_domain=data.default_domain,
    ).to_pylist()
    return [replace(item, domain=domain) for (item, _, _), domain in zip(items, domains)]


def read_questions(path: Path, data: DataSettings) -> list[EvalItem]:
    """Every row of a question file (or folder of them); any unusable row stops with all reasons listed."""
    items: list[EvalItem] = []
    errors: list[str] = []
    for source in expand_sources([SourceSpec(path=str(path))]):
        rows = 0
        pending: list[tuple[EvalItem, str | None, str | None]] = []
        for location, value in _located_rows(source):
            rows += 1
            try:
                if isinstance(value, RowError):
                    raise value
                pending.append(question_item(value, f"{source.path.name}:{location}", data))
            except RowError as exc:
                errors.append(f"{source.name} {location}: {exc}")
        if not rows:
            raise IngestError(f"{source.name}: the file has no rows")
        items.extend(_routed(pending, source, data))
    if errors:
        listed = errors[:MAX_LISTED_ERRORS]
        more = f"\n  … and {len(errors) - len(listed)} more" if len(errors) > len(listed) else ""
        raise IngestError(f"{len(errors)} unusable question row(s); nothing was evaluated:\n  " + "\n  ".join(listed) + more)
    return items


def default_output(questions: Path) -> Path:
    return Path.cwd() / f"{questions.stem}.answers.json"


def score_shard(settings: Settings, choice: ModelChoice, items: list[EvalItem]) -> list[ItemResult]:
    """Answer and score one shard of the questions (loads the model: one shard per worker/GPU)."""
    # transformers initialises weights on a process-wide meta device while loading: two
    # threads loading at once break each other; scoring itself runs in parallel.
    with _LOADING:
        loaded = load_model(settings, choice)
    return score_items(loaded.model, loaded.tokenizer, items, settings.validate, max_length=settings.train.max_seq_length)


ShardScorer = Callable[[Iterator[list[EvalItem]]], Iterator[list[ItemResult]]]


def run_eval_batch(
    settings: Settings, questions: Path, choice: ModelChoice, output: Path, *, score_shards: ShardScorer | None = None, shard_items: int = 256,
) -> BatchResult:
    """Answer every question with the chosen model, score those with a reference, write JSON.

    ``score_shards``: score shards of ``shard_items`` questions elsewhere (Prefect tasks on
    scale.task_runner), results in shard order; by default all in this process.
    """
    items = read_questions(questions, settings.data)
    if score_shards is None:
        results = score_shard(settings, choice, items)
    else:
        shards = (items[start: start + shard_items] for start in range(0, len(items), shard_items))
        results = [result for shard in score_shards(shards) for result in shard]
    overall, per_domain = summarize(results, bleu_tokenize=settings.validate.bleu_tokenize)
    result = BatchResult(
        model=choice,
        questions_file=str(questions),
        created_at=datetime.now(timezone.utc).isoformat(),
        settings={
            "decoding": "greedy",
            "max_new_tokens": settings.validate.max_new_tokens,
            "max_seq_length": settings.train.max_seq_length,
            "bleu_tokenize": settings.validate.bleu_tokenize,
            "numeric_percent_as_fraction": settings.validate.numeric_percent_as_fraction,
            "numeric_tolerance": settings.validate.numeric_tolerance,
            "squad_normalization": settings.validate.squad_normalization,
        },
        overall=overall,
        per_domain=per_domain,
        items=results,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return result
