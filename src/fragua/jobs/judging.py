"""The judge in validation: opening the judge validate.judge names, its verdicts on a model's
answers, and the head-to-head of the candidate against production."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from fragua.models.identity import locate_base
from fragua.models.loading import LoadedModel, load_for_inference
from fragua.registry import open_registry
from fragua.registry.versions import RegistryError
from fragua.settings import Settings
from fragua.validate.judge import Judge, JudgeError, JudgeItem
from fragua.validate.judge_backends import EndpointJudge, LocalJudge, secret_block_value
from fragua.validate.pairwise import AnswerPair, HeadToHead, judge_pairs, largest_differences
from fragua.validate.scoring import EvalItem, ItemResult

logger = logging.getLogger("fragua.jobs")
DIFFERENCES_SHOWN = 10
_NO_VERDICT = {"judge_verdict": None, "judge_missing": None, "judge_score": None}


def _folder_identity(folder: Path) -> str:
    """A local folder's weights may be replaced in place: its newest file's time is part of the key."""
    newest = max((path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()), default=0)
    return f"folder:{folder.resolve()}:{newest}"


def open_judge(settings: Settings) -> Judge | None:
    """The judge validate.judge names (None when none is): an endpoint, a model folder, or a registry version."""
    config = settings.validate.judge
    if config.model is None:
        return None
    cache_folder = settings.work_path / "judge"
    if config.endpoint is not None:
        key = secret_block_value(config.api_key_block) if config.api_key_block else None
        backend = EndpointJudge(
            config.endpoint, config.model, api_key=key, max_new_tokens=config.max_new_tokens,
            timeout_s=config.timeout_s, concurrency=config.concurrency,
        )
        return Judge(backend, cache_folder)
    folder = Path(config.model).expanduser()
    if folder.is_dir():
        return Judge(
            LocalJudge(
                lambda: load_for_inference(folder, settings.train), identity=_folder_identity(folder), label=f"folder {folder}",
                max_new_tokens=config.max_new_tokens, batch_size=config.concurrency,
            ),
            cache_folder,
        )
    registry = open_registry(settings)
    try:
        manifest = registry.manifest(config.model)
    except RegistryError as exc:
        raise JudgeError(f"validate.judge.model {config.model!r} is neither a model folder nor a registry version ({exc})") from exc

    def load() -> LoadedModel:  # the version's files are fetched and checksum-verified first
        return load_for_inference(registry.fetch(config.model), settings.train, base_model=locate_base(manifest.lineage, settings.base_model_ref))

    backend = LocalJudge(load, identity=f"version:{config.model}", label=f"version {config.model}", max_new_tokens=config.max_new_tokens, batch_size=config.concurrency)
    return Judge(backend, cache_folder)


def judge_item(item: EvalItem, answer: str) -> JudgeItem:
    """What the judge reads: every correct answer, or the no-answer target of an unanswerable question."""
    return JudgeItem(question=item.question, references=item.references or (item.reference or "",), answer=answer)


def judged(item: EvalItem, result: ItemResult) -> bool:
    """The judge reads free-form answers to questions with a reference (multiple choice has its accuracy)."""
    return result.chosen is None and item.reference is not None


def with_verdicts(judge: Judge | None, items: Sequence[EvalItem], results: Sequence[ItemResult]) -> list[ItemResult]:
    """``results`` with the judge's verdicts; without a judge, with none (a cached result may hold an earlier judge's)."""
    if judge is None:
        return [result.model_copy(update=_NO_VERDICT) for result in results]
    chosen = [i for i, (item, result) in enumerate(zip(items, results)) if judged(item, result)]
    verdicts = judge.verdicts([judge_item(items[i], results[i].prediction) for i in chosen])
    updated = [result.model_copy(update=_NO_VERDICT) for result in results]
    for index, verdict in zip(chosen, verdicts):
        updated[index] = results[index].model_copy(update={"judge_verdict": verdict.verdict, "judge_missing": verdict.missing, "judge_score": verdict.score})
    if chosen:
        logger.info("judge %s: %d verdicts", judge.backend.label, len(chosen))
    return updated


def _score(result: ItemResult) -> float | None:
    return result.judge_score if result.judge_score is not None else result.token_f1


def head_to_head(
    judge: Judge | None, items: Mapping[str, EvalItem], candidate: Mapping[str, ItemResult], production: Mapping[str, ItemResult], version: str,
) -> HeadToHead:
    """The candidate against production on the free-form questions both answered: the judge's
    win rate (when there is a judge) and the answers that differ most."""
    keys = [key for key, item in items.items() if key in candidate and key in production and judged(item, candidate[key])]
    pairs = [
        AnswerPair(
            id=items[key].id, domain=items[key].domain, question=items[key].question, reference=items[key].reference,
            candidate=candidate[key].prediction, production=production[key].prediction,
            candidate_score=_score(candidate[key]), production_score=_score(production[key]),
        )
        for key in keys
    ]
    rate = judge_pairs(judge, [judge_item(items[key], "") for key in keys], pairs) if judge is not None and pairs else None
    return HeadToHead(production_version=version, shared=len(pairs), win_rate=rate, differences=largest_differences(pairs, DIFFERENCES_SHOWN))
