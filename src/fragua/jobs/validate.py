"""Validation jobs: score a model on a dataset's validation split, apply the gates, write the reports."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, Field

from fragua.data.store import open_dataset_store
from fragua.integrations.tracking import tracking_run
from fragua.jobs.data import dataset_split
from fragua.jobs.judging import head_to_head, open_judge, with_verdicts
from fragua.models.identity import locate_base
from fragua.models.loading import load_for_inference
from fragua.registry import open_registry
from fragua.registry.versions import PRODUCTION, Registry, RegistryError
from fragua.reports.validation import validation_report
from fragua.settings import Settings
from fragua.train.runs import RunFolder
from fragua.validate.benchmarks import BenchmarkComparison
from fragua.validate.drift import ReferenceComparison, ScoreCache, best_reference, question_key, scoring_key
from fragua.validate.gates import Decision, decide
from fragua.validate.pairwise import HeadToHead
from fragua.validate.plots import loss_curve, metric_bars
from fragua.validate.retention import Retention
from fragua.validate.scoring import EvalItem, Evaluation, ItemResult, score_items, spread_samples, summarize

logger = logging.getLogger("fragua.jobs")


class ValidationOutcome(BaseModel):
    run_id: str
    dataset_id: str
    candidate: Evaluation
    base: Evaluation | None
    production: Evaluation | None
    production_version: str | None
    reference: ReferenceComparison | None = Field(None, description="Candidate vs the best promoted (or pinned) version on shared questions.")
    head_to_head: HeadToHead | None = Field(None, description="Candidate vs production answers: the judge's win rate, the largest differences.")
    decision: Decision
    benchmarks: BenchmarkComparison | None = Field(None, description="validate.benchmarks on candidate, production and base (lm-eval).")
    retention: Retention | None = Field(None, description="Learning and forgetting on samples of the team's own trained examples.")
    report_path: str
    eval_path: str
    plots: dict[str, str] = Field(default_factory=dict, description="Plot name -> PNG in the run's validation folder.")


def load_run(settings: Settings, run_id: str | None) -> RunFolder:
    """A trained run's folder; None means the newest trained run."""
    return RunFolder.find(settings.runs_path, run_id)


def score_cache(settings: Settings) -> ScoreCache:
    return ScoreCache(settings.work_path / "scores", scoring_key(settings.validate, settings.train.max_seq_length))


def validation_items(settings: Settings, dataset_id: str) -> dict[str, EvalItem]:
    """The validation questions (validate.max_examples of them at most), keyed by content hash."""
    records = dataset_split(settings, open_dataset_store(settings).find(dataset_id), "validation")
    if settings.validate.max_examples:
        records = records[: settings.validate.max_examples]
    if not records:
        raise ValueError("nothing to evaluate: the validation split is empty")
    items = [EvalItem.from_record(r) for r in records]
    return {question_key(item): item for item in items}


def _score(settings: Settings, model_path: str, items: list[EvalItem], base_model: str | None = None) -> list[ItemResult]:
    loaded = load_for_inference(model_path, settings.train, base_model=base_model)
    return score_items(loaded.model, loaded.tokenizer, items, settings.validate, max_length=settings.train.max_seq_length)


def _evaluation(settings: Settings, name: str, results: list[ItemResult]) -> Evaluation:
    overall, per_domain = summarize(results, bleu_tokenize=settings.validate.bleu_tokenize)
    return Evaluation(model=name, overall=overall, per_domain=per_domain, samples=spread_samples(results, settings.validate.report_samples))


def evaluate_model(settings: Settings, dataset_id: str, model_path: str, *, name: str, run_id: str | None = None) -> Evaluation:
    """Score a model on the validation split; with ``run_id``, keep its per-question scores for the drift gate."""
    items = validation_items(settings, dataset_id)
    results = with_verdicts(open_judge(settings), list(items.values()), _score(settings, model_path, list(items.values())))
    if run_id is not None:
        score_cache(settings).save("runs", run_id, dict(zip(items, results)), merge=False)
    return _evaluation(settings, name, results)


def version_scores(settings: Settings, registry: Registry, version: str, items: dict[str, EvalItem]) -> dict[str, ItemResult]:
    """A version's scores on ``items``: cached ones, the rest scored now and cached, with the
    judge's verdicts (cached too). A version that is gone from the registry (retention) keeps
    only its cached scores."""
    cache = score_cache(settings)
    cached = cache.load("versions", version)
    missing = [key for key in items if key not in cached]
    if missing:
        try:
            manifest = registry.manifest(version)
        except RegistryError:
            logger.info("version %s is gone from the registry: compared on its %d cached scores only", version, len(cached))
        else:
            folder = registry.fetch(version)
            base = locate_base(manifest.lineage, settings.base_model_ref)
            cached.update(zip(missing, _score(settings, str(folder), [items[k] for k in missing], base_model=base)))
    keys = [k for k in items if k in cached]
    judged = dict(zip(keys, with_verdicts(open_judge(settings), [items[k] for k in keys], [cached[k] for k in keys])))
    cache.save("versions", version, judged)
    return judged


def evaluate_version(settings: Settings, dataset_id: str, version: str) -> Evaluation:
    """A registry version on the validation split, scored only on questions it has no cached scores for."""
    items = validation_items(settings, dataset_id)
    registry = open_registry(settings)
    registry.fetch(version)  # checksums verified even when every score is cached: production must still be intact
    scores = version_scores(settings, registry, version, items)
    return _evaluation(settings, version, [scores[k] for k in items])


def promoted_versions(registry: Registry) -> list[str]:
    """Every version production ever pointed to, oldest first."""
    seen = [event.to_version for event in registry.history() if event.alias == PRODUCTION and event.to_version]
    current = registry.production()
    if current is not None:
        seen.append(current.version)
    return list(dict.fromkeys(seen))


def reference_comparison(settings: Settings, dataset_id: str, run_id: str) -> ReferenceComparison | None:
    """The candidate (its scores kept by evaluate_model) against validate.reference_version, or
    against the best promoted version, on the questions both were scored on."""
    items = validation_items(settings, dataset_id)
    candidate = {k: v for k, v in score_cache(settings).load("runs", run_id).items() if k in items}
    if not candidate:
        raise FileNotFoundError(f"run {run_id} has no per-question scores under {settings.work_path / 'scores'}; evaluate it first")
    registry, cache = open_registry(settings), score_cache(settings)
    pinned = settings.validate.reference_version
    if pinned:
        if not cache.load("versions", pinned):
            registry.manifest(pinned)  # names the known versions when the pinned one does not exist
        versions = [pinned]
    else:
        versions = promoted_versions(registry)
    # The best is chosen on the scores cached so far; only that version is scored on today's new
    # questions, so a long history costs one evaluation per cycle, not one per promoted version.
    cached = {version: {k: v for k, v in cache.load("versions", version).items() if k in items} for version in versions}
    chosen = best_reference(candidate, cached, settings.validate, pinned=bool(pinned))
    scoring = [chosen.version] if chosen else versions  # nothing cached yet (an older registry): score them all once
    references = {version: version_scores(settings, registry, version, items) for version in scoring}
    return best_reference(candidate, references, settings.validate, pinned=bool(pinned))


def compare_with_production(settings: Settings, dataset_id: str, run_id: str, version: str) -> HeadToHead:
    """The candidate's answers against the production version's on the same validation questions
    (both scored by now, so read from the score cache): the judge's win rate and the largest differences."""
    items = validation_items(settings, dataset_id)
    cache = score_cache(settings)
    return head_to_head(open_judge(settings), items, cache.load("runs", run_id), cache.load("versions", version), version)


def keep_scores_as_version(settings: Settings, run_id: str, version: str) -> None:
    """A published run's per-question scores become its version's: the next cycle need not score it again."""
    cache = score_cache(settings)
    if scores := cache.load("runs", run_id):
        cache.save("versions", version, scores)


def record_validation(
    settings: Settings,
    run_id: str,
    dataset_id: str,
    candidate: Evaluation,
    base: Evaluation | None,
    production: Evaluation | None,
    production_version: str | None,
    reference: ReferenceComparison | None = None,
    versus_production: HeadToHead | None = None,
    *,
    benchmarks: BenchmarkComparison | None = None,
    retention: Retention | None = None,
) -> ValidationOutcome:
    """Apply the gates; write eval.json, report.md and the plots into the run's validation
    folder; log metrics, decision and plots to tracking."""
    decision = decide(
        candidate.overall,
        settings.validate,
        base=base.overall if base else None,
        production=production.overall if production else None,
        production_version=production_version,
        reference=reference,
        win_rate=versus_production.win_rate if versus_production else None,
        benchmarks=benchmarks,
    )
    run = RunFolder.of(settings.runs_path, run_id)
    run.validation_dir.mkdir(parents=True, exist_ok=True)
    plots = validation_plots(run, candidate, base, production, production_version)
    report = validation_report(
        run_id=run_id,
        dataset_id=dataset_id,
        candidate=candidate,
        base=base,
        production=production,
        production_version=production_version,
        reference=reference,
        versus_production=versus_production,
        decision=decision,
        plots={name: path.name for name, path in plots.items()},
        benchmarks=benchmarks,
        retention=retention,
    )
    outcome = ValidationOutcome(
        run_id=run_id,
        dataset_id=dataset_id,
        candidate=candidate,
        base=base,
        production=production,
        production_version=production_version,
        reference=reference,
        head_to_head=versus_production,
        decision=decision,
        benchmarks=benchmarks,
        retention=retention,
        report_path=str(run.validation_report_file),
        eval_path=str(run.validation_file),
        plots={name: str(path) for name, path in plots.items()},
    )
    run.validation_report_file.write_text(report, encoding="utf-8")
    run.validation_file.write_text(outcome.model_dump_json(indent=2), encoding="utf-8")
    with tracking_run(settings.tracking, settings.work_path, name=f"{run_id}-validate", job_type="validate", config=settings.redacted()) as tracker:
        metrics = {f"candidate/{k}": v for k, v in candidate.overall.model_dump(exclude_none=True).items()}
        for domain, values in candidate.per_domain.items():
            metrics.update({f"candidate/{domain}/{k}": v for k, v in values.model_dump(exclude_none=True).items()})
        if base:
            metrics.update({f"base/{k}": v for k, v in base.overall.model_dump(exclude_none=True).items()})
        if production:
            metrics.update({f"production/{k}": v for k, v in production.overall.model_dump(exclude_none=True).items()})
        if reference:
            metrics.update({f"best/{k}": v for k, v in reference.reference.model_dump(exclude_none=True).items()})
            metrics.update({f"candidate_on_best_questions/{k}": v for k, v in reference.candidate.model_dump(exclude_none=True).items()})
        if benchmarks:
            for label, scores in (("candidate", benchmarks.candidate), ("production", benchmarks.production), ("base", benchmarks.base)):
                metrics.update({f"benchmarks/{label}/{task}/{score.metric}": score.value for task, score in (scores or {}).items()})
        if versus_production and versus_production.win_rate:
            rate = versus_production.win_rate
            metrics.update({"win_rate/rate": rate.rate, "win_rate/low": rate.low, "win_rate/high": rate.high, "win_rate/wins": rate.wins,
                            "win_rate/ties": rate.ties, "win_rate/losses": rate.losses})
        tracker.log(metrics)
        for name, path in plots.items():
            tracker.log_image(f"validation/{name}", path)
        tracker.summarize({"passed": decision.passed, "reasons": decision.reasons, "failed_metrics": decision.failed_metrics})
    return outcome


def validation_plots(
    run: RunFolder, candidate: Evaluation, base: Evaluation | None, production: Evaluation | None, production_version: str | None
) -> dict[str, Path]:
    """The loss curve of the run's training and the per-domain metric bars, as PNG files."""
    plots: dict[str, Path] = {}
    if run.report_file.is_file():
        if curve := loss_curve(run.report().log_history, run.validation_dir / "loss_curve.png", title=f"Run {run.run_id}"):
            plots["loss_curve"] = curve
    production_label = f"production {production_version}" if production_version else "production"
    evaluations = {"candidate": candidate, production_label: production, "base": base}
    if bars := metric_bars(evaluations, run.validation_dir / "metrics_by_domain.png", title=f"Validation of run {run.run_id}"):
        plots["metrics_by_domain"] = bars
    return plots


def load_validation(settings: Settings, run_id: str) -> ValidationOutcome:
    path = RunFolder.of(settings.runs_path, run_id).validation_file
    if not path.is_file():
        raise FileNotFoundError(f"run {run_id} has not been validated yet ({path} missing); run `fragua validate --run {run_id}`")
    return ValidationOutcome.model_validate_json(path.read_text())
