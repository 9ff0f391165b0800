"""The operations the Prefect tasks wrap, one function each, over Settings.

Each function does one job end to end (read inputs, call the pure pieces, write outputs)
so that a task is a thin retrying wrapper and a CLI or test can call the same thing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import BaseModel, Field

from . import __version__, dataset_store
from .base_model import build_tiny_base
from .checkpoint_mirror import CheckpointMirror, MirrorWatch
from .dataset_store import DatasetManifest, DatasetStore, LocalDatasetStore, ObjectDatasetStore
from .evaluation import Evaluation, evaluate
from .expand import HeldOutGuard, InProcess, Sharding, ShardRunner, expand_train
from .gates import Decision, decide
from .ingest import IngestError, ingest, sources_fingerprint
from . import shards
from .shards import ShardMapper, ShardWork
from .hpo import HpoPlan, HpoResult, Trial, TrialResult, best_trial, sample_trials, trial_rows, trial_settings
from .incremental import select_incremental
from .modeling import ModelLoadError, is_adapter, load_for_inference
from .plots import loss_curve, metric_bars
from .progress import transfer_progress
from .records import Record
from .registry import PREVIOUS, PRODUCTION, AliasState, CleanupReport, Registry, RegistryError, VersionManifest, size_label
from .report import model_card, validation_report
from .settings import Settings
from .sources import file_sha256
from .storage import LocalStore, ObjectStore
from .tracking import tracking_run
from .remote_data import split_path, stream_records
from .training import StreamedSplit, TrainReport, train

BASE_MARKER = "fragua_base.json"
logger = logging.getLogger("fragua.jobs")
SMOKE_QUESTION = "What can you help me with?"


class ValidationOutcome(BaseModel):
    run_id: str
    dataset_id: str
    candidate: Evaluation
    base: Evaluation | None
    production: Evaluation | None
    production_version: str | None
    decision: Decision
    report_path: str
    eval_path: str
    plots: dict[str, str] = Field(default_factory=dict, description="Plot name -> PNG in the run's validation folder.")


class Promotion(BaseModel):
    """An alias move and what it replaced: enough to undo it if a later deploy step fails."""

    production: AliasState
    previous_before: str | None


class DeployOutcome(BaseModel):
    version: str | None
    published: bool
    promoted: bool
    production: str | None
    reasons: list[str]
    report_path: str | None = None


# Data -----------------------------------------------------------------------------------


def open_dataset_store(settings: Settings) -> DatasetStore:
    """Where dataset versions live (data.store): work_dir/datasets, or the registry's storage."""
    if settings.data.store == "registry":
        return ObjectDatasetStore(open_store(settings), settings.work_path / "cache" / "datasets")
    return LocalDatasetStore(settings.datasets_path)


def dataset_split(settings: Settings, dataset: DatasetManifest, split: str) -> list[Record]:
    """A split of a dataset version as training and evaluation see it: only data.domains, if set."""
    return dataset_store.load_records(dataset, split, settings.data.domains)


def streamed_split(settings: Settings, dataset: DatasetManifest, split: str) -> StreamedSplit:
    """A split read from the registry's S3 bucket pass by pass (train.stream_data), only data.domains if set."""
    unknown = sorted(set(settings.data.domains or ()) - set(dataset.domains))
    if unknown:
        raise ValueError(f"data.domains: dataset {dataset.id} has no domain {', '.join(map(repr, unknown))}; it has {', '.join(dataset.domains)}")
    location = "s3://" + split_path(settings.registry, dataset.id, split)
    return StreamedSplit(lambda: stream_records(settings.registry, dataset.id, split, settings.data.domains), location)


def stats_tokenizer(settings: Settings) -> Path | None:
    """The base model's tokenizer.json when it is on local disk (token lengths in the dataset stats)."""
    candidate = Path(settings.base_model_ref).expanduser() / "tokenizer.json"
    return candidate if candidate.is_file() else None


def ingest_inputs_key(settings: Settings) -> str | None:
    """What an ingest's result depends on: source contents, data settings, the store, the
    stats tokenizer and Fragua's version. None when a source cannot be fingerprinted (an
    unpinned hub dataset) or does not exist (ingest will say why)."""
    try:
        fingerprints = list(sources_fingerprint(settings.data))
    except (IngestError, OSError):
        return None
    if any(fingerprint is None for _, fingerprint in fingerprints):
        return None
    store = open_dataset_store(settings)
    tokenizer = stats_tokenizer(settings)
    payload = {
        "fragua": __version__,
        "sources": fingerprints,
        "data": settings.data.ingest_fingerprint(),
        "store": [store.describe(), store.instance()],
        "tokenizer": file_sha256(tokenizer) if tokenizer else None,
    }
    return "ingest-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def ingest_cache_key(settings: Settings) -> str | None:
    """The ingest task's cache key: its inputs key, unless the version those inputs produced
    has been deleted since (a cache hit would then point at nothing)."""
    key = ingest_inputs_key(settings)
    if key is None:
        return None
    store = open_dataset_store(settings)
    recorded = store.recall(key)
    if recorded is not None and store.open(recorded) is None:
        return f"{key}-rebuild-{uuid.uuid4().hex}"
    return key


def ingest_sources(settings: Settings, map_shards: ShardMapper | None = None) -> DatasetManifest:
    """``map_shards``: run the per-shard work elsewhere (Prefect tasks on scale.task_runner)."""
    return ingest(
        settings.data, store=open_dataset_store(settings), tokenizer_file=stats_tokenizer(settings), ingest_key=ingest_inputs_key(settings),
        map_shards=map_shards, shard_bytes=settings.scale.shard_bytes,
    )


def prepare_shard(work: ShardWork) -> list[Any]:
    return shards.prepare_shard(work)


def score_question_shard(settings: Settings, choice: Any, items: list[Any]) -> list[Any]:
    from .batch_eval import score_shard

    return score_shard(settings, choice, items)


def eval_batch(settings: Settings, questions: Path, choice: Any, output: Path, score_shards: Any = None) -> Any:
    from .batch_eval import run_eval_batch

    return run_eval_batch(settings, questions, choice, output, score_shards=score_shards, shard_items=settings.scale.eval_shard_items)


def expansion_generator(settings: Settings) -> tuple[Any, str]:
    """The text generator of the model-based expansion strategies and a label for the report:
    expand.generation.model (a registry version, a local folder or a hub id), else the
    production version, else the base model while nothing is deployed."""
    from .generation import TextGenerator
    from .inference import ModelChoice, load_model, resolve_model

    wanted = settings.expand.generation.model
    if wanted is None:
        try:
            choice = resolve_model(settings)
        except RegistryError:
            base = ensure_base_model(settings)
            choice = ModelChoice(label=f"base model {base} (no production version yet)", folder=base)
    elif Path(wanted).expanduser().is_dir():
        choice = resolve_model(settings, path=wanted)
    else:
        try:
            choice = resolve_model(settings, version=wanted)
        except RegistryError:
            choice = ModelChoice(label=wanted, folder=wanted)  # a hub id; loading says so if it is none
    return TextGenerator(load_model(settings, choice), settings.expand.generation), choice.label


def held_out_guard(held_out: bytes, threshold: float) -> HeldOutGuard:
    """The leakage guard, built where the shards run from the packed held-out records."""
    return HeldOutGuard(shards.unpack(held_out), threshold)


def prepare_expand_shard(work: bytes, guard: HeldOutGuard | None) -> bytes:
    """A packed expand shard run; the result packed."""
    return shards.pack(shards.unpack(work).run(guard))


def expand_dataset(settings: Settings, dataset_id: str, runner: ShardRunner | None = None) -> DatasetManifest:
    """A child dataset version whose train split is expanded; validation and test copied unchanged.
    With expand.expansion_factor 1.0 the version itself is returned. ``runner``: where expand's
    shards run (Prefect tasks on scale.task_runner); the version does not depend on it."""
    store = open_dataset_store(settings)
    parent = store.find(dataset_id)
    if settings.expand.expansion_factor <= 1.0:
        return parent
    train_records = dataset_store.load_records(parent, "train")
    held_out = dataset_store.load_records(parent, "validation") + dataset_store.load_records(parent, "test")
    generator, label = expansion_generator(settings) if settings.expand.model_strategies else (None, None)
    expansion = expand_train(
        train_records, settings.expand, settings.data, held_out=held_out, generator=generator, generator_label=label,
        sharding=Sharding(runner or InProcess(), settings.scale.expand_shard_rows, settings.scale.shards_in_flight),
    )
    logger.info("expanded %s: %s", parent.id, {k: expansion.report[k] for k in ("train_before", "train_after", "achieved_factor")})
    return dataset_store.write_dataset_version(
        store,
        expansion.records + held_out,
        quarantine=expansion.rejected,
        sources=parent.sources,
        settings={**parent.settings, "expand": settings.expand.model_dump(mode="json")},
        parent=parent.id,
        report={"expansion": expansion.report},
    )


# Base model -----------------------------------------------------------------------------


def ensure_base_model(settings: Settings, *, force: bool = False) -> str:
    """The configured base model id/path; builds the tiny local base when none is configured."""
    if settings.train.base_model:
        return settings.train.base_model
    path = settings.tiny_base_path
    wanted = settings.train.tiny.model_dump(mode="json")
    marker = path / BASE_MARKER
    if marker.is_file() and not force:
        built = json.loads(marker.read_text())
        if built != wanted:
            raise ModelLoadError(
                f"the tiny base model at {path} was built with train.tiny = {built}, but the settings say {wanted}; "
                "run `fragua init-base --force` to rebuild it (versions trained on the old one need the old one to load)"
            )
        return str(path)
    build_tiny_base(path, settings.train.tiny, force=True)
    marker.write_text(json.dumps(wanted, indent=2))
    return str(path)


# Training -------------------------------------------------------------------------------


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


def incremental_start(settings: Settings, base: str, train_records: list[Record]) -> tuple[IncrementalStart, list[Record]] | None:
    """The production version to continue and the new + replayed examples; None without production."""
    production = production_state(settings)
    if production is None:
        return None
    manifest = open_registry(settings).manifest(production.version)
    lineage = manifest.lineage
    if lineage.get("base_model") != base:
        raise ModelLoadError(
            f"incremental training continues production version {production.version}, which was trained from base model "
            f"{lineage.get('base_model')!r}, but train.base_model resolves to {base!r}; use the same base model or set train.incremental=false"
        )
    if (lineage.get("method") == "full") != (settings.train.method == "full"):
        raise ValueError(
            f"incremental training cannot continue production version {production.version} (method {lineage.get('method')!r}) "
            f"with train.method {settings.train.method!r}: adapters continue adapters, full fine-tunes continue full fine-tunes"
        )
    store = open_dataset_store(settings)
    try:
        parent_dataset = store.find(lineage["dataset_id"])
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"incremental training needs dataset {lineage['dataset_id']} of production version {production.version} to tell new "
            f"examples from old ones, and it is not under {store.describe()}; ingest that data again or set train.incremental=false"
        ) from exc
    known = {r.id for split in dataset_store.SPLITS for r in dataset_store.load_records(parent_dataset, split)}
    selection = select_incremental(train_records, known, replay_ratio=settings.train.replay_ratio, seed=settings.train.seed)
    weights = fetch_version(settings, production.version)
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
    dataset = open_dataset_store(settings).find(dataset_id, fetch=not streaming)
    base = ensure_base_model(settings)
    start_info = None
    if streaming:
        train_records: list[Record] | StreamedSplit = streamed_split(settings, dataset, "train")
        eval_records = list(stream_records(settings.registry, dataset.id, "validation", settings.data.domains))
    else:
        train_records = dataset_split(settings, dataset, "train")
        eval_records = dataset_split(settings, dataset, "validation")
        start = incremental_start(settings, base, train_records) if settings.train.incremental else None
        if start:
            start_info, train_records = start
    run_id = training_run_id(settings, dataset.id, start_info.version if start_info else None)
    run_dir = settings.runs_path / run_id
    finished = run_dir / "train_report.json"
    if finished.is_file() and (run_dir / "model").is_dir():
        logger.info("run %s already finished; delete %s to train it again", run_id, run_dir)
        return TrainReport.model_validate_json(finished.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(
        json.dumps(
            {"run_id": run_id, "dataset_id": dataset.id, "base_model": base, "parent_version": start_info.version if start_info else None,
             "settings": settings.redacted()},
            indent=2,
        )
    )
    train_settings = settings.train
    init_adapter, load_from = None, base
    if start_info and start_info.adapter:
        init_adapter = Path(start_info.weights)
    elif start_info:
        load_from = start_info.weights  # a full fine-tune continues from its own weights
    with tracking_run(settings.tracking, settings.work_path, name=run_id, job_type=job_type, config=settings.redacted()) as tracker, \
            mirrored_checkpoints(settings, run_id, run_dir / "checkpoints"):
        common = dict(
            base_model=load_from, settings=train_settings, train_records=train_records,
            eval_records=eval_records, run_dir=run_dir, run_name=run_id,
            init_adapter=init_adapter, deadline=deadline,
        )
        if train_settings.num_processes > 1:
            from .distributed import train_distributed

            def forward(event: dict[str, Any]) -> None:
                # The workers cannot share this process's W&B run; their progress is logged here.
                tracker.log({"train/loss": event["loss"], "train/learning_rate": event["learning_rate"],
                             "train/tokens_per_second": event["tokens_per_second"], "train/global_step": event["step"]})
                if progress:
                    progress(event)

            report = train_distributed(**common, progress=forward)
        else:
            report = train(**common, report_to=tracker.report_to, progress=progress)
        report.base_model = base
        if start_info:
            report.parent_version = start_info.version
            report.incremental = start_info.summary
            tracker.summarize({"parent_version": start_info.version, **start_info.summary})
        tracker.summarize({"tokens_per_second": report.tokens_per_second, "batching": report.batching})
        report.tracking_run = tracker.reference
    finished.write_text(report.model_dump_json(indent=2))
    return report


# Hyperparameter search -------------------------------------------------------------------


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


def load_run(settings: Settings, run_id: str | None) -> dict[str, Any]:
    """A training run's record (run.json); None means the newest trained run."""
    runs = sorted(
        (p for p in settings.runs_path.glob("*") if (p / "train_report.json").is_file()),
        key=lambda p: (p / "train_report.json").stat().st_mtime,
    ) if settings.runs_path.is_dir() else []
    if run_id is None:
        if not runs:
            raise FileNotFoundError(f"no trained runs under {settings.runs_path}; run `fragua train` first")
        chosen = runs[-1]
    else:
        chosen = settings.runs_path / run_id
        if not (chosen / "train_report.json").is_file():
            raise FileNotFoundError(f"no trained run {run_id!r} under {settings.runs_path}")
    return {**json.loads((chosen / "run.json").read_text()), "run_dir": str(chosen)}


# Validation -----------------------------------------------------------------------------


def open_store(settings: Settings) -> ObjectStore:
    """The configured registry backend: a local directory or an S3 bucket."""
    if settings.registry.backend == "s3":
        from .s3 import open_s3_store

        return open_s3_store(settings.registry)
    return LocalStore(settings.registry_path)


def open_registry(settings: Settings) -> Registry:
    return Registry(open_store(settings), settings.registry.model_name, progress=transfer_progress)


def production_state(settings: Settings) -> AliasState | None:
    state, _ = open_registry(settings).alias(PRODUCTION)
    return state


def fetch_version(settings: Settings, version: str) -> Path:
    return open_registry(settings).fetch(version, settings.work_path / "cache" / "models")


def evaluate_model(settings: Settings, dataset_id: str, model_path: str, *, name: str) -> Evaluation:
    dataset = open_dataset_store(settings).find(dataset_id)
    records = dataset_split(settings, dataset, "validation")
    loaded = load_for_inference(model_path, settings.train)
    return evaluate(loaded.model, loaded.tokenizer, records, settings.validate, max_length=settings.train.max_seq_length, name=name)


def record_validation(
    settings: Settings,
    run_id: str,
    dataset_id: str,
    candidate: Evaluation,
    base: Evaluation | None,
    production: Evaluation | None,
    production_version: str | None,
) -> ValidationOutcome:
    """Apply the gates; write eval.json, report.md and the plots into the run's validation
    folder; log metrics, decision and plots to tracking."""
    decision = decide(
        candidate.overall,
        settings.validate,
        base=base.overall if base else None,
        production=production.overall if production else None,
        production_version=production_version,
    )
    folder = settings.runs_path / run_id / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    plots = validation_plots(settings, run_id, folder, candidate, base, production, production_version)
    report = validation_report(
        run_id=run_id,
        dataset_id=dataset_id,
        candidate=candidate,
        base=base,
        production=production,
        production_version=production_version,
        decision=decision,
        plots={name: path.name for name, path in plots.items()},
    )
    outcome = ValidationOutcome(
        run_id=run_id,
        dataset_id=dataset_id,
        candidate=candidate,
        base=base,
        production=production,
        production_version=production_version,
        decision=decision,
        report_path=str(folder / "report.md"),
        eval_path=str(folder / "eval.json"),
        plots={name: str(path) for name, path in plots.items()},
    )
    (folder / "report.md").write_text(report, encoding="utf-8")
    (folder / "eval.json").write_text(outcome.model_dump_json(indent=2), encoding="utf-8")
    with tracking_run(settings.tracking, settings.work_path, name=f"{run_id}-validate", job_type="validate", config=settings.redacted()) as tracker:
        metrics = {f"candidate/{k}": v for k, v in candidate.overall.model_dump(exclude_none=True).items()}
        for domain, values in candidate.per_domain.items():
            metrics.update({f"candidate/{domain}/{k}": v for k, v in values.model_dump(exclude_none=True).items()})
        if base:
            metrics.update({f"base/{k}": v for k, v in base.overall.model_dump(exclude_none=True).items()})
        if production:
            metrics.update({f"production/{k}": v for k, v in production.overall.model_dump(exclude_none=True).items()})
        tracker.log(metrics)
        for name, path in plots.items():
            tracker.log_image(f"validation/{name}", path)
        tracker.summarize({"passed": decision.passed, "reasons": decision.reasons, "failed_metrics": decision.failed_metrics})
    return outcome


def validation_plots(
    settings: Settings,
    run_id: str,
    folder: Path,
    candidate: Evaluation,
    base: Evaluation | None,
    production: Evaluation | None,
    production_version: str | None,
) -> dict[str, Path]:
    """The loss curve of the run's training and the per-domain metric bars, as PNG files."""
    plots: dict[str, Path] = {}
    train_report = settings.runs_path / run_id / "train_report.json"
    if train_report.is_file():
        history = TrainReport.model_validate_json(train_report.read_text()).log_history
        if curve := loss_curve(history, folder / "loss_curve.png", title=f"Run {run_id}"):
            plots["loss_curve"] = curve
    production_label = f"production {production_version}" if production_version else "production"
    evaluations = {"candidate": candidate, production_label: production, "base": base}
    if bars := metric_bars(evaluations, folder / "metrics_by_domain.png", title=f"Validation of run {run_id}"):
        plots["metrics_by_domain"] = bars
    return plots


def load_validation(settings: Settings, run_id: str) -> ValidationOutcome:
    path = settings.runs_path / run_id / "validation" / "eval.json"
    if not path.is_file():
        raise FileNotFoundError(f"run {run_id} has not been validated yet ({path} missing); run `fragua validate --run {run_id}`")
    return ValidationOutcome.model_validate_json(path.read_text())


# Registry -------------------------------------------------------------------------------


def allocate_version(settings: Settings, run_id: str) -> str:
    """Reserve the next version number for a run (its size label comes from the trained model)."""
    run_dir = Path(load_run(settings, run_id)["run_dir"])
    size = settings.registry.size_label
    if size == "auto":
        size = size_label(TrainReport.model_validate_json((run_dir / "train_report.json").read_text()).base_parameters)
    return open_registry(settings).allocate(size)


def publish_run(settings: Settings, run_id: str, *, flow_run_id: str | None = None, version: str | None = None) -> VersionManifest:
    """Upload the run's model, reports and card as ``version`` (allocated here when None); manifest last.

    With a ``version`` allocated beforehand, a retry after a storage failure uploads into
    the same version instead of taking a new number."""
    run = load_run(settings, run_id)
    validation = load_validation(settings, run_id)
    if not validation.decision.passed:
        raise RegistryError(f"run {run_id} did not pass validation; not publishing:\n  " + "\n  ".join(validation.decision.reasons))
    run_dir = Path(run["run_dir"])
    train_report = TrainReport.model_validate_json((run_dir / "train_report.json").read_text())
    dataset = open_dataset_store(settings).find(run["dataset_id"])
    registry = open_registry(settings)
    production = production_state(settings)
    manifest_fields = {
        "metrics": {
            "overall": validation.candidate.overall.model_dump(),
            "per_domain": {d: m.model_dump() for d, m in validation.candidate.per_domain.items()},
            "base": validation.base.overall.model_dump() if validation.base else None,
            "production": validation.production.overall.model_dump() if validation.production else None,
        },
        "decision": validation.decision.model_dump(),
        "lineage": {
            "base_model": run["base_model"],
            "method": train_report.method,
            "parent_version": production.version if production else None,
            "trained_from": train_report.parent_version,
            "incremental": train_report.incremental,
            "dataset_id": dataset.id,
            "dataset_counts": dataset.counts,
            "run_id": run_id,
            "tracking_run": train_report.tracking_run,
            "prefect_flow_run_id": flow_run_id,
            "settings": run["settings"],
        },
    }
    version = version or allocate_version(settings, run_id)
    card = run_dir / "README.md"
    card.write_text(
        model_card(
            version=version,
            manifest_fields=manifest_fields,
            metrics=validation.candidate.overall,
            report=Path(validation.report_path).read_text(encoding="utf-8"),
        ),
        encoding="utf-8",
    )
    model_dir = Path(train_report.adapter_dir)
    files = {p.relative_to(model_dir).as_posix(): p for p in sorted(model_dir.rglob("*")) if p.is_file()}
    files.update(
        {
            "README.md": card,
            "eval.json": Path(validation.eval_path),
            "report.md": Path(validation.report_path),
            "train_report.json": run_dir / "train_report.json",
            # at the version's root, next to report.md, whose image links are relative
            **{Path(path).name: Path(path) for path in validation.plots.values()},
        }
    )
    return registry.publish(version, files, manifest_fields)


def version_file(settings: Settings, version: str, relative: str) -> str:
    """Where a file of a published version lives, for people to open."""
    registry = open_registry(settings)
    return f"{registry.store.describe()}/{registry.version_prefix(version)}/{relative}"


def verify_version(settings: Settings, version: str) -> str:
    """Download with checksum verification, load, and generate an answer: the smoke check."""
    from .chat import generation_prompt, stop_token_ids
    from .records import Message

    manifest = open_registry(settings).manifest(version)
    folder = fetch_version(settings, version)
    loaded = load_for_inference(folder, settings.train, base_model=manifest.lineage.get("base_model"))
    prompt = generation_prompt(loaded.tokenizer, [Message(role="user", content=SMOKE_QUESTION)])
    inputs = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(loaded.model.device)
    output = loaded.model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=stop_token_ids(loaded.tokenizer), pad_token_id=loaded.tokenizer.pad_token_id)
    new_tokens = output.shape[1] - inputs["input_ids"].shape[1]
    if new_tokens < 1:
        raise RegistryError(f"smoke check of {version} failed: the model generated nothing")
    return loaded.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def promote_version(settings: Settings, version: str, *, expected_production: str | None, reason: str, actor: str | None = None) -> Promotion:
    """Move production to ``version`` only if production is still what validation compared against."""
    registry = open_registry(settings)
    expected = registry.alias(PRODUCTION)
    current = expected[0].version if expected[0] else None
    if current != expected_production:
        raise RegistryError(
            f"production is now {current or 'unset'}, but {version} was validated against {expected_production or 'no production version'}; "
            "validate again before deploying"
        )
    previous, _ = registry.alias(PREVIOUS)
    state = registry.promote(version, reason=reason, actor=actor, expected=expected)
    return Promotion(production=state, previous_before=previous.version if previous else None)


def revert_promotion(settings: Settings, promotion: Promotion, *, reason: str, actor: str | None = None) -> bool:
    """Put production (and previous) back as they were before ``promotion``, unless someone moved them since."""
    return open_registry(settings).revert(promotion.production, promotion.previous_before, reason=reason, actor=actor)


def confirm_production(settings: Settings, version: str) -> None:
    """The post-promotion check: production resolves to ``version`` and all its files are in the store."""
    open_registry(settings).confirm(PRODUCTION, version)


def rollback(settings: Settings, to: str | None = None, *, actor: str | None = None) -> AliasState:
    return open_registry(settings).rollback(to, actor=actor)


def clean_registry(
    settings: Settings, *, keep_last: int | None = None, grace_minutes: float | None = None, dry_run: bool = False
) -> CleanupReport:
    """`fragua registry gc`: unfinished versions past the grace period, then retention (keep_last)."""
    grace = settings.registry.gc_grace_minutes if grace_minutes is None else grace_minutes
    return open_registry(settings).cleanup(
        keep_last=keep_last if keep_last is not None else settings.registry.keep_last,
        grace=timedelta(minutes=grace),
        dry_run=dry_run,
    )


# Export ---------------------------------------------------------------------------------


class ExportOutcome(BaseModel):
    version: str
    folder: str = Field(description="The exported model: the version as stored, or merged into its base.")
    merged: bool
    gguf: str | None = None


def export_version(
    settings: Settings,
    version: str,
    output: Path,
    *,
    merged: bool,
    gguf: bool = False,
    converter: Path | None = None,
    gguf_type: str = "f16",
) -> ExportOutcome:
    """A verified copy of ``version`` under ``output``: as stored, merged (safetensors) and/or GGUF.

    GGUF needs a merged model and llama.cpp's converter; without the converter this raises
    ExportError naming what to install, after the merged model was written."""
    from .export import INSTALL_CONVERTER, ExportError, convert_to_gguf, find_converter, merge_version

    registry = open_registry(settings)
    manifest = registry.manifest(version)
    local = registry.fetch(version, settings.work_path / "cache" / "models")
    output = output.expanduser().resolve()
    if not (merged or gguf):
        target = output / version
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(local, target)
        return ExportOutcome(version=version, folder=str(target), merged=False)
    folder = merge_version(local, manifest, output / f"{version}-merged", settings.train)
    if not gguf:
        return ExportOutcome(version=version, folder=str(folder), merged=True)
    found = find_converter(converter)
    if found is None:
        raise ExportError(f"{INSTALL_CONVERTER}\nmerged model: {folder}")
    gguf_file = convert_to_gguf(folder, output / f"{version}.gguf", found, outtype=gguf_type)
    return ExportOutcome(version=version, folder=str(folder), merged=True, gguf=str(gguf_file))
