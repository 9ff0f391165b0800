"""Forgetting guard: general benchmarks from lm-evaluation-harness, run on a model Fragua has
already loaded, and the gate that compares the candidate with the production version.

lm-eval is used as a library, not re-implemented: its ``HFLM`` wraps the model object Fragua
loaded (base model + adapter, exactly as validation and serving load it), tasks come from
Fragua's shipped folder, the folders of ``validate.benchmark_include_path`` and lm-eval's own
registry, and ``simple_evaluate`` scores them. Only the comparison and the gate are Fragua's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, Field, TypeAdapter

from fragua.settings import BenchmarkSpec, ValidateSettings, resource_path

logger = logging.getLogger("fragua.validate")

SHIPPED_TASKS = resource_path("resources", "benchmarks")
# lm-eval's closed-form standard error of a mean needs bootstrap_iters > 0; metrics that are
# bootstrapped (few in multiple-choice tasks) get this many resamples.
BOOTSTRAP_ITERS = 1000


class _ExpectedNotices(logging.Filter):
    """lm-eval warns when it is handed a model object instead of a name, and when a task reads
    its own data (the shipped task): Fragua does both on purpose, so the warnings only confuse."""

    NOTICES = ("`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model", "Custom kwargs can be passed")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(notice in record.getMessage() for notice in self.NOTICES)


def _quiet_expected_notices() -> None:
    for name in ("lm_eval.models.huggingface", "lm_eval.api.task"):
        target = logging.getLogger(name)
        if not any(isinstance(existing, _ExpectedNotices) for existing in target.filters):
            target.addFilter(_ExpectedNotices())


class BenchmarkError(ValueError):
    """A validate.benchmarks entry cannot run (unknown task, data out of reach, metric not
    reported); the message says what to change. A ValueError: retrying would fail the same way."""


class BenchmarkScore(BaseModel):
    """One model's score on one validate.benchmarks task."""

    task: str
    metric: str = Field(description="The metric as validate.benchmarks names it (acc, acc_norm, exact_match,strict-match).")
    value: float
    stderr: float | None = Field(None, description="lm-eval's standard error of the score; None when it reports none.")
    higher_is_better: bool = True
    questions: int = Field(description="Questions scored (validate.benchmarks limit, per subtask for a group).")
    available: int = Field(description="Questions the task has.")
    lm_eval_version: str


_SCORES = TypeAdapter(dict[str, BenchmarkScore])


def lm_eval_version() -> str:
    return package_version("lm_eval")


def spec_key(spec: BenchmarkSpec, settings: ValidateSettings) -> str:
    """What decides a benchmark score besides the model: the task entry, the chat template, lm-eval's version."""
    content = {**spec.model_dump(), "chat_template": settings.benchmark_chat_template, "lm_eval": lm_eval_version()}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


class BenchmarkCache:
    """Benchmark scores of models already run, ``folder/<kind>/<name>.json`` (kind: ``base``,
    ``versions`` or ``runs``), each a map of spec_key -> score, written whole and atomically: a
    production version or a base model is run once per benchmark entry, not once per cycle."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, kind: str, name: str) -> Path:
        return self.folder / kind / f"{name}.json"

    def load(self, kind: str, name: str) -> dict[str, BenchmarkScore]:
        path = self._path(kind, name)
        return _SCORES.validate_json(path.read_bytes()) if path.is_file() else {}

    def save(self, kind: str, name: str, scores: dict[str, BenchmarkScore]) -> None:
        path = self._path(kind, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**self.load(kind, name), **scores}
        handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(handle, "wb") as out:
            out.write(_SCORES.dump_json(merged))
        os.replace(staging, path)


def task_manager(tasks: Sequence[str], include_paths: Sequence[str]) -> Any:
    """An lm-eval TaskManager that knows every task named: Fragua's shipped tasks and the
    include paths alone when they hold them all (indexing lm-eval's own registry of hundreds of
    task folders takes tens of seconds), else with the registry too."""
    from lm_eval.tasks import TaskManager

    folders = [str(SHIPPED_TASKS)]
    for entry in include_paths:
        folder = Path(entry).expanduser()
        if not folder.is_dir():
            raise BenchmarkError(f"validate.benchmark_include_path: {folder} is not a folder; give folders of lm-eval task YAML files")
        folders.append(str(folder))
    local = TaskManager(include_path=folders, include_defaults=False)
    if all(task in local.all_tasks for task in tasks):
        return local
    everything = TaskManager(include_path=folders)
    unknown = [task for task in tasks if task not in everything.all_tasks]
    if unknown:
        raise BenchmarkError(
            f"validate.benchmarks: lm-eval knows no task {', '.join(map(repr, unknown))} (searched its registry and "
            f"{', '.join(folders)}); check the name (`lm_eval ls tasks`) or add its folder to validate.benchmark_include_path"
        )
    return everything


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _leaf_tasks(results: dict[str, Any], name: str) -> list[str]:
    children = results.get("group_subtasks", {}).get(name)
    if not children:
        return [name]
    return [leaf for child in children for leaf in _leaf_tasks(results, child)]


def read_score(results: dict[str, Any], spec: BenchmarkSpec) -> BenchmarkScore:
    """The spec's metric from lm-eval's results of a task, or of a group (its aggregate)."""
    table = results.get("groups", {}).get(spec.task) or results["results"].get(spec.task)
    if table is None:
        raise BenchmarkError(
            f"validate.benchmarks: {spec.task!r} gave no score of its own (a tag of several tasks?); lm-eval scored "
            f"{', '.join(sorted(results['results']))}: name one of them, or a group"
        )
    value = _float(table.get(spec.result_key))
    if value is None:
        reported = sorted(key for key in table if "," in key and "_stderr" not in key)
        raise BenchmarkError(
            f"validate.benchmarks: task {spec.task!r} reports no metric {spec.metric!r}; it reports {', '.join(reported) or 'none'} "
            "(set metric to one of them; ',none' may be left out)"
        )
    metric, _, metric_filter = spec.result_key.partition(",")
    counts = [results.get("n-samples", {}).get(leaf, {}) for leaf in _leaf_tasks(results, spec.task)]
    direction = results.get("higher_is_better", {}).get(spec.task, {}).get(metric)
    return BenchmarkScore(
        task=spec.task,
        metric=spec.metric,
        value=value,
        stderr=_float(table.get(f"{metric}_stderr,{metric_filter}")),
        higher_is_better=direction is not False,
        questions=sum(int(count.get("effective", 0)) for count in counts),
        available=sum(int(count.get("original", 0)) for count in counts),
        lm_eval_version=lm_eval_version(),
    )


def run_benchmarks(model: Any, tokenizer: Any, specs: Sequence[BenchmarkSpec], settings: ValidateSettings, *, max_length: int | None = None) -> dict[str, BenchmarkScore]:
    """Score a loaded model on each spec (one ``simple_evaluate`` per entry, as limit and
    few-shot count are per run); ``max_length``: lm-eval's context window, None for the model's own."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    if not specs:
        return {}
    _quiet_expected_notices()
    manager = task_manager([spec.task for spec in specs], settings.benchmark_include_path)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size, max_length=max_length)
    scores = {}
    for spec in specs:
        try:
            results = lm_eval.simple_evaluate(
                model=lm, tasks=[spec.task], limit=spec.limit, num_fewshot=spec.num_fewshot, task_manager=manager,
                apply_chat_template=settings.benchmark_chat_template, log_samples=False, bootstrap_iters=BOOTSTRAP_ITERS,
            )
        except OSError as exc:  # the hub out of reach, a dataset not cached, a data file missing
            raise BenchmarkError(
                f"validate.benchmarks: lm-eval could not load the data of {spec.task!r}: {exc}. Registry tasks download from "
                "the Hugging Face hub: reach it once (the data is cached), or use a task with local data (validate.benchmark_include_path)"
            ) from exc
        scores[spec.task] = read_score(results, spec)
        logger.info("benchmark %s: %s %.4f on %d questions", spec.task, spec.metric, scores[spec.task].value, scores[spec.task].questions)
    return scores


class BenchmarkComparison(BaseModel):
    """The candidate, the production version and the base model on validate.benchmarks."""

    tasks: list[str] = Field(description="validate.benchmarks task names, in the order given.")
    candidate: dict[str, BenchmarkScore]
    production: dict[str, BenchmarkScore] | None = None
    base: dict[str, BenchmarkScore] | None = None
    production_version: str | None = None
    parent_version: str | None = Field(None, description="The version the candidate continued (incremental training), if any.")
    replay_ratio: float | None = Field(None, description="train.replay_ratio of an incremental candidate.")

    def drop(self, task: str) -> float | None:
        """How much worse the candidate is than production on the task (negative: better)."""
        ours, theirs = self.candidate.get(task), (self.production or {}).get(task)
        if ours is None or theirs is None:
            return None
        return (theirs.value - ours.value) if ours.higher_is_better else (ours.value - theirs.value)


def benchmark_gates(comparison: BenchmarkComparison, max_drop: float) -> list[tuple[bool, str, str]]:
    """(passed, metric, reason) per task the production version was also scored on: the
    candidate may fall at most validate.max_benchmark_drop below it."""
    label = f"production {comparison.production_version}" if comparison.production_version else "production"
    gates = []
    for task in comparison.tasks:
        drop = comparison.drop(task)
        if drop is None:
            continue
        ours, theirs = comparison.candidate[task], (comparison.production or {})[task]
        ok = drop <= max_drop
        if ours.higher_is_better:
            relation, bound = (">=" if ok else "<"), "-"
        else:
            relation, bound = ("<=" if ok else ">"), "+"
        text = (
            f"benchmark {task} {ours.metric} {ours.value:.4f} {relation} {label}'s {theirs.value:.4f} {bound} "
            f"validate.max_benchmark_drop {max_drop:.4f}" + ("" if ok else f" (a drop of {drop:.4f}: general ability forgotten)")
        )
        gates.append((ok, f"{task}/{ours.metric}", text))
    return gates
