"""Validation tasks: the trained run, scores on the validation split, the gates' outcome."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fragua.jobs.validate import (
    ValidationOutcome,
    compare_with_production,
    evaluate_model,
    evaluate_version,
    load_run,
    load_validation,
    record_validation,
    reference_comparison,
)
from fragua.settings import Settings
from fragua.train.runs import RunFolder
from fragua.validate.benchmarks import BenchmarkComparison
from fragua.validate.drift import ReferenceComparison
from fragua.validate.pairwise import HeadToHead
from fragua.validate.retention import Retention
from fragua.validate.scoring import Evaluation

from . import STORAGE_RETRY_DELAYS, transient_only

# Fetching a version can hit a storage outage; a retry re-scores only what was not cached yet.
_STORAGE = dict(retries=3, retry_delay_seconds=STORAGE_RETRY_DELAYS, retry_condition_fn=transient_only, cache_policy=NO_CACHE)


@task(name="load-run", cache_policy=NO_CACHE)
def load_run_task(settings: Settings, run_id: str | None) -> RunFolder:
    return load_run(settings, run_id)


def _log_scores(name: str, evaluation: Evaluation) -> None:
    overall = evaluation.overall
    scores = ", ".join(f"{metric} {overall.value(metric):.4f}" for metric in ["loss", "perplexity", *overall.measured()] if overall.value(metric) is not None)
    get_run_logger().info("%s on %d examples: %s", name, overall.n, scores)


@task(name="evaluate", task_run_name="evaluate-{name}", cache_policy=NO_CACHE)
def evaluate_task(settings: Settings, dataset_id: str, model_path: str, name: str, run_id: str | None = None) -> Evaluation:
    evaluation = evaluate_model(settings, dataset_id, model_path, name=name, run_id=run_id)
    _log_scores(name, evaluation)
    return evaluation


# validate_flow scores the production version with it (the drift guard's reference goes through best-reference).
@task(name="evaluate-version", task_run_name="evaluate-production-{version}", **_STORAGE)
def evaluate_version_task(settings: Settings, dataset_id: str, version: str) -> Evaluation:
    evaluation = evaluate_version(settings, dataset_id, version)
    _log_scores(version, evaluation)
    return evaluation


@task(name="best-reference", **_STORAGE)
def reference_task(settings: Settings, dataset_id: str, run_id: str) -> ReferenceComparison | None:
    reference = reference_comparison(settings, dataset_id, run_id)
    if reference is not None:
        get_run_logger().info("drift guard: compared with %s on %d shared validation questions", reference.version, reference.shared)
    return reference


@task(name="versus-production", task_run_name="versus-production-{version}", cache_policy=NO_CACHE)
def versus_production_task(settings: Settings, dataset_id: str, run_id: str, version: str) -> HeadToHead:
    comparison = compare_with_production(settings, dataset_id, run_id, version)
    if comparison.win_rate is not None:
        rate = comparison.win_rate
        get_run_logger().info(
            "win rate against %s: %.4f (95%% interval %.4f-%.4f; %d wins, %d ties, %d losses)",
            version, rate.rate, rate.low, rate.high, rate.wins, rate.ties, rate.losses,
        )
    return comparison


@task(name="record-validation", cache_policy=NO_CACHE)
def record_validation_task(
    settings: Settings,
    run_id: str,
    dataset_id: str,
    candidate: Evaluation,
    base: Evaluation | None,
    production: Evaluation | None,
    production_version: str | None,
    reference: ReferenceComparison | None = None,
    versus_production: HeadToHead | None = None,
    benchmarks: BenchmarkComparison | None = None,
    retention: Retention | None = None,
) -> ValidationOutcome:
    outcome = record_validation(
        settings, run_id, dataset_id, candidate, base, production, production_version, reference, versus_production,
        benchmarks=benchmarks, retention=retention,
    )
    logger = get_run_logger()
    logger.info("validation %s", "passed" if outcome.decision.passed else "FAILED")
    for reason in outcome.decision.reasons:
        logger.info(reason)
    return outcome


@task(name="load-validation", cache_policy=NO_CACHE)
def load_validation_task(settings: Settings, run_id: str) -> ValidationOutcome:
    return load_validation(settings, run_id)
