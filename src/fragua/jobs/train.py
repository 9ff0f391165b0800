"""Training jobs: a run (fresh, resumed or incremental), a hyperparameter search."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import BaseModel

from fragua.data import store as dataset_store
from fragua.data.records import Record
from fragua.data.remote import stream_records
from fragua.data.store import DatasetStore, open_dataset_store
from fragua.integrations.tracking import tracking_run
from fragua.jobs.data import dataset_split, streamed_split
from fragua.models.identity import base_model_identity, same_base
from fragua.models.loading import ModelLoadError, is_adapter
from fragua.models.tiny import ensure_base_model
from fragua.registry import open_registry
from fragua.registry.versions import Registry
from fragua.settings import Settings
from fragua.storage import open_store
from fragua.train.checkpoint_mirror import CheckpointMirror, MirrorWatch
from fragua.train.cache import TrainingCache
from fragua.train.data import StreamedSplit
from fragua.train.hpo import HpoPlan, HpoResult, Trial, TrialResult, best_trial, sample_trials, trial_rows, trial_settings
from fragua.train.incremental import select_incremental
from fragua.train.report import PhaseClock, TrainReport
from fragua.train.runs import RunFolder, RunRecord
from fragua.train.trainer import train

logger = logging.getLogger("fragua.jobs")


def training_run_id(settings: Settings, dataset_id: str, parent_version: str | None = None) -> str:
    """Same data, training settings (and starting version), same run id: a re-run resumes instead of restarting."""
    parent = f"-from-{parent_version}" if parent_version else ""
    return f"{dataset_id[:12]}-{settings.fingerprint('train')[:8]}{parent}"


class IncrementalStart(BaseModel):
    """Where incremental training starts: the production version and what it trains on."""

    version: str
    weights: str
    adapter: bool
    summary: dict[str, int]


def incremental_start(
    settings: Settings, base: str, train_records: list[Record], registry: Registry, store: DatasetStore
) -> tuple[IncrementalStart, list[Record]] | None:
    """The production version to continue and the new + replayed examples; None without production."""
    production = registry.production()
    if production is None:
        return None
    manifest = registry.manifest(production.version)
    lineage = manifest.lineage
    if not same_base(lineage, base):
        trained_from = lineage.get("base_model_id") or lineage.get("base_model")
        raise ModelLoadError(
            f"incremental training continues production version {production.version}, which was trained from base model "
            f"{trained_from!r} (recorded at {lineage.get('base_model')!r}), but train.base_model resolves to {base!r} "
            f"({base_model_identity(base)}); use the same base model or set train.incremental=false"
        )
    if (lineage.get("method") == "full") != (settings.train.method == "full"):
        raise ValueError(
            f"incremental training cannot continue production version {production.version} (method {lineage.get('method')!r}) "
            f"with train.method {settings.train.method!r}: adapters continue adapters, full fine-tunes continue full fine-tunes"
        )
    try:
        parent_dataset = store.find(lineage["dataset_id"])
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"incremental training needs dataset {lineage['dataset_id']} of production version {production.version} to tell new "
            f"examples from old ones, and it is not under {store.describe()}; ingest that data again or set train.incremental=false"
        ) from exc
    known = {r.id for split in dataset_store.SPLITS for r in dataset_store.load_records(parent_dataset, split)}
    selection = select_incremental(train_records, known, replay_ratio=settings.train.replay_ratio, seed=settings.train.seed)
    weights = registry.fetch(production.version)
    start = IncrementalStart(version=production.version, weights=str(weights), adapter=is_adapter(weights), summary=selection.summary())
    return start, selection.records


@contextmanager
def mirrored_checkpoints(settings: Settings, run_id: str, checkpoints_dir: Path) -> Iterator[None]:
    """With train.checkpoint_store 'registry': resume from the registry's copy when it is newer than
    the local one, and mirror every new complete checkpoint there while the body trains."""
    if settings.train.checkpoint_store != "registry":
        yield
        return
    mirror = CheckpointMirror(open_store(settings), run_id, keep=settings.train.save_total_limit)
    mirror.restore(checkpoints_dir)
    with MirrorWatch(mirror, checkpoints_dir):
        yield


def train_model(
    settings: Settings,
    dataset_id: str,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    deadline: float | None = None,
    job_type: str = "train",
) -> TrainReport:
    """Train (or resume, or return the finished) run for this dataset and these settings."""
    # Incremental training picks its rows from the whole split, so it reads the split whole.
    streaming = settings.train.stream_data and not settings.train.incremental
    if settings.train.stream_data and not streaming:
        logger.info("train.stream_data: incremental training selects among all train rows, so the split is read whole")
    clock = PhaseClock()
    with clock.phase("load data"):
        store = open_dataset_store(settings)
        dataset = store.find(dataset_id, fetch=not streaming)
        base = ensure_base_model(settings)
        start_info = None
        if streaming:
            train_records: list[Record] | StreamedSplit = streamed_split(settings, dataset, "train")
            eval_records = list(stream_records(settings.registry, dataset.id, "validation", settings.data.domains))
        else:
            train_records = dataset_split(settings, dataset, "train")
            eval_records = dataset_split(settings, dataset, "validation")
            start = incremental_start(settings, base, train_records, open_registry(settings), store) if settings.train.incremental else None
            if start:
                start_info, train_records = start
    run_id = training_run_id(settings, dataset.id, start_info.version if start_info else None)
    run = RunFolder.of(settings.runs_path, run_id)
    if run.finished():
        logger.info("run %s already finished; delete %s to train it again", run_id, run.path)
        return run.report()
    run.write_record(RunRecord(run_id=run_id, dataset_id=dataset.id, base_model=base, parent_version=start_info.version if start_info else None,
                               settings=settings.redacted()))
    train_settings = settings.train
    init_adapter, load_from = None, base
    if start_info and start_info.adapter:
        init_adapter = Path(start_info.weights)
    elif start_info:
        load_from = start_info.weights  # a full fine-tune continues from its own weights
    cache = training_cache(settings, dataset.id, train_selected=start_info is not None or streaming)
    # W&B sets its run up while the model and data are prepared; train() waits for it before the first step.
    with tracking_run(settings.tracking, settings.work_path, name=run_id, job_type=job_type, config=settings.redacted(), background=True) as tracker, \
            mirrored_checkpoints(settings, run_id, run.checkpoints_dir):
        common = dict(
            base_model=load_from, settings=train_settings, train_records=train_records,
            eval_records=eval_records, run_dir=run.path, run_name=run_id,
            init_adapter=init_adapter, deadline=deadline,
        )
        if train_settings.num_processes > 1:
            from fragua.train.distributed import train_distributed

            def forward(event: dict[str, Any]) -> None:
                # The workers cannot share this process's W&B run; their progress is logged here.
                tracker.log({"train/loss": event["loss"], "train/learning_rate": event["learning_rate"],
                             "train/tokens_per_second": event["tokens_per_second"], "train/global_step": event["step"]})
                if progress:
                    progress(event)

            report = train_distributed(**common, progress=forward)
        else:
            report = train(**common, report_to=tracker.report_to, tracking_ready=tracker.ready, progress=progress, cache=cache)
        report.base_model = base
        if start_info:
            report.parent_version = start_info.version
            report.incremental = start_info.summary
            tracker.summarize({"parent_version": start_info.version, **start_info.summary})
        tracker.summarize({"tokens_per_second": report.tokens_per_second, "batching": report.batching})
        report.tracking_run = tracker.reference
    clock.add("tracking", tracker.seconds)
    report.phase_seconds = {**clock.seconds, **report.phase_seconds}
    run.write_report(report)
    return report


def training_cache(settings: Settings, dataset_id: str, *, train_selected: bool) -> TrainingCache:
    """The work directory's training cache; a split is cached under its dataset version, name and domain filter,
    except a train split that is an incremental selection or streamed (its rows have no stable identity)."""
    domains = sorted(settings.data.domains or [])
    split_ids = {split: f"{dataset_id}/{split}/{','.join(domains)}" for split in ("train", "validation")}
    if train_selected:
        del split_ids["train"]
    return TrainingCache(settings.work_path / "cache" / "training", split_ids)


def plan_hpo(settings: Settings, dataset_id: str) -> HpoPlan:
    """The trials to run and the search's deadline; fails at once when nothing can be scored."""
    dataset = open_dataset_store(settings).find(dataset_id)
    if not dataset.counts.get("validation"):
        raise ValueError(f"dataset {dataset.id} has no validation examples, so trials cannot be compared; raise data.validation_fraction")
    return HpoPlan(dataset_id=dataset.id, trials=sample_trials(settings.hpo), deadline=time.time() + settings.hpo.time_budget_minutes * 60)


def run_trial(settings: Settings, dataset_id: str, trial: Trial, deadline: float) -> TrialResult:
    """Train one trial (a normal run: resumable, tracked) and score it by validation loss."""
    if time.time() >= deadline:
        return TrialResult(trial=trial, status="skipped (time budget)")
    try:
        report = train_model(trial_settings(settings, trial), dataset_id, deadline=deadline, job_type="hpo-trial")
    except (RuntimeError, ValueError) as exc:
        return TrialResult(trial=trial, status=f"failed: {exc}")
    return TrialResult(
        trial=trial,
        status="stopped by time budget" if report.stopped_by_time_budget else "finished",
        run_id=report.run_id,
        eval_loss=report.eval_loss,
        train_loss=report.train_loss,
        global_step=report.global_step,
        seconds=report.seconds,
    )


def record_hpo(settings: Settings, dataset_id: str, results: list[TrialResult]) -> HpoResult:
    """Pick the best trial, write the search's result file and log every trial to tracking."""
    best = best_trial(results)
    folder = settings.work_path / "hpo"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"hpo-{dataset_id[:12]}-{settings.fingerprint('train', 'hpo')[:8]}"
    with tracking_run(settings.tracking, settings.work_path, name=name, job_type="hpo", config=settings.redacted()) as tracker:
        tracker.log_table("trials", trial_rows(results))
        if best:
            tracker.summarize({"best_trial": best.trial.number, "best_eval_loss": best.eval_loss, "best_run_id": best.run_id,
                               **{f"best_{k}": v for k, v in best.trial.model_dump().items() if k != "number"}})
        outcome = HpoResult(dataset_id=dataset_id, trials=results, best=best, tracking_run=tracker.reference)
    path = folder / f"{name}.json"
    outcome.report_path = str(path)
    path.write_text(outcome.model_dump_json(indent=2))
    return outcome
