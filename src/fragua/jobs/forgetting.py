"""Forgetting checks of a validation: the general benchmarks (validate.benchmarks, lm-eval) on
base, production and candidate, and the learning/forgetting table on the team's own trained
examples (validate.retention_samples)."""

from __future__ import annotations

import hashlib
import logging
from typing import Callable

from fragua.data import store as dataset_store
from fragua.data.store import open_dataset_store
from fragua.jobs.data import dataset_split
from fragua.jobs.validate import version_scores
from fragua.models.identity import base_model_identity, locate_base
from fragua.models.loading import LoadedModel, load_for_inference
from fragua.registry import open_registry
from fragua.registry.versions import RegistryError
from fragua.settings import Settings
from fragua.train.incremental import select_incremental
from fragua.train.runs import RunFolder, RunRecord
from fragua.validate.benchmarks import BenchmarkCache, BenchmarkComparison, BenchmarkScore, run_benchmarks, spec_key
from fragua.validate.drift import question_key
from fragua.validate.retention import Retention, retention_groups, retention_table
from fragua.validate.scoring import EvalItem, ItemResult, score_items

logger = logging.getLogger("fragua.jobs")


def _run(settings: Settings, run_id: str) -> tuple[RunFolder, RunRecord]:
    run = RunFolder.of(settings.runs_path, run_id)
    return run, run.record()


def _load_version(settings: Settings, version: str) -> LoadedModel:
    registry = open_registry(settings)
    manifest = registry.manifest(version)
    return load_for_inference(registry.fetch(version), settings.train, base_model=locate_base(manifest.lineage, settings.base_model_ref))


def benchmark_cache(settings: Settings) -> BenchmarkCache:
    return BenchmarkCache(settings.work_path / "benchmarks")


def _benchmark_scores(settings: Settings, kind: str, name: str, load: Callable[[], LoadedModel], *, reuse: bool = True) -> dict[str, BenchmarkScore]:
    """The model's score on every validate.benchmarks entry: cached ones (``reuse``), the rest run now and cached."""
    specs, cache = settings.validate.benchmarks, benchmark_cache(settings)
    keys = {spec.task: spec_key(spec, settings.validate) for spec in specs}
    cached = cache.load(kind, name) if reuse else {}
    missing = [spec for spec in specs if keys[spec.task] not in cached]
    if missing:
        loaded = load()
        scored = run_benchmarks(loaded.model, loaded.tokenizer, missing, settings.validate)
        fresh = {keys[task]: score for task, score in scored.items()}
        cache.save(kind, name, fresh)
        cached.update(fresh)
    return {spec.task: cached[keys[spec.task]] for spec in specs}


def benchmark_comparison(settings: Settings, run_id: str, production_version: str | None) -> BenchmarkComparison | None:
    """validate.benchmarks on the candidate (loaded as validation loads it: base + adapter), the
    production version and the base model; None when no benchmark is set. The base model's and
    versions' scores are kept under work_dir/benchmarks and reused; the candidate is always run."""
    if not settings.validate.benchmarks:
        return None
    run, record = _run(settings, run_id)
    candidate = _benchmark_scores(
        settings, "runs", run_id, lambda: load_for_inference(run.model_dir, settings.train, base_model=record.base_model), reuse=False
    )
    base_name = hashlib.sha256(base_model_identity(record.base_model).encode()).hexdigest()[:16]
    base = _benchmark_scores(settings, "base", base_name, lambda: load_for_inference(record.base_model, settings.train))
    production = None
    if production_version is not None:
        production = _benchmark_scores(settings, "versions", production_version, lambda: _load_version(settings, production_version))
    return BenchmarkComparison(
        tasks=[spec.task for spec in settings.validate.benchmarks],
        candidate=candidate,
        production=production,
        base=base,
        production_version=production_version,
        parent_version=record.parent_version,
        replay_ratio=record.settings["train"]["replay_ratio"] if record.parent_version else None,
    )


def keep_benchmarks_as_version(settings: Settings, run_id: str, version: str) -> None:
    """A published run's benchmark scores become its version's: as production it is not run again."""
    cache = benchmark_cache(settings)
    if scores := cache.load("runs", run_id):
        cache.save("versions", version, scores)


def _score(settings: Settings, loaded: LoadedModel, items: dict[str, EvalItem]) -> dict[str, ItemResult]:
    results = score_items(loaded.model, loaded.tokenizer, list(items.values()), settings.validate, max_length=settings.train.max_seq_length)
    return dict(zip(items, results))


def retention_check(settings: Settings, run_id: str, production_version: str | None) -> Retention | None:
    """The learning/forgetting table: samples of what the candidate trained on and, next to the
    version it follows (the one it continued, else production), of the new and the older train
    examples, each scored on base, that version and the candidate. None with validate.retention_samples 0."""
    count, seed = settings.validate.retention_samples, settings.validate.retention_seed
    if not count:
        return None
    run, record = _run(settings, run_id)
    store = open_dataset_store(settings)
    train = dataset_split(settings, store.find(record.dataset_id), "train")
    previous = record.parent_version or production_version
    previous_dataset = previous_train = None
    if previous is not None:
        try:
            parent = store.find(open_registry(settings).manifest(previous).lineage["dataset_id"])
        except (RegistryError, FileNotFoundError, KeyError) as exc:
            logger.info("retention: the dataset of %s is out of reach (%s); only the trained sample is scored", previous, exc)
        else:
            previous_train = {r.id for r in dataset_store.load_records(parent, "train")}
            previous_dataset = previous_train | {r.id for split in dataset_store.SPLITS if split != "train" for r in dataset_store.load_records(parent, split)}
    trained = train
    if record.parent_version and previous_dataset is not None:
        # What incremental training picked: the new examples and the same seeded replay sample.
        options = record.settings["train"]
        trained = select_incremental(train, previous_dataset, replay_ratio=options["replay_ratio"], seed=options["seed"]).records
    samples = retention_groups(trained, train, previous_dataset=previous_dataset, previous_train=previous_train, count=count, seed=seed)
    items = {question_key(item): item for records in samples.values() for item in map(EvalItem.from_record, records)}
    results = {
        "base": _score(settings, load_for_inference(record.base_model, settings.train), items),
        "candidate": _score(settings, load_for_inference(run.model_dir, settings.train, base_model=record.base_model), items),
    }
    if previous_dataset is not None and previous is not None:
        results["previous"] = version_scores(settings, open_registry(settings), previous, items)
    keys = {name: [question_key(EvalItem.from_record(r)) for r in records] for name, records in samples.items()}
    return retention_table(
        keys, results, previous_version=previous if previous_dataset is not None else None,
        incremental=record.parent_version is not None, seed=seed, bleu_tokenize=settings.validate.bleu_tokenize,
    )
