"""Validation tasks: the trained run, scores on the validation split, the gates' outcome."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fragua.jobs.validate import ValidationOutcome, evaluate_model, load_run, load_validation, record_validation
from fragua.settings import Settings
from fragua.train.runs import RunFolder
from fragua.validate.scoring import Evaluation


@task(name="load-run", cache_policy=NO_CACHE)
def load_run_task(settings: Settings, run_id: str | None) -> RunFolder:
    return load_run(settings, run_id)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(settings: Settings, dataset_id: str, model_path: str, name: str) -> Evaluation:
    evaluation = evaluate_model(settings, dataset_id, model_path, name=name)
    overall = evaluation.overall
    scores = ", ".join(f"{metric} {overall.value(metric):.4f}" for metric in ["loss", "perplexity", *overall.measured()] if overall.value(metric) is not None)
    get_run_logger().info("%s on %d examples: %s", name, overall.n, scores)
    return evaluation


@task(name="record-validation", cache_policy=NO_CACHE)
def record_validation_task(
    settings: Settings,
    run_id: str,
    dataset_id: str,
    candidate: Evaluation,
    base: Evaluation | None,
    production: Evaluation | None,
    production_version: str | None,
) -> ValidationOutcome:
    outcome = record_validation(settings, run_id, dataset_id, candidate, base, production, production_version)
    logger = get_run_logger()
    logger.info("validation %s", "passed" if outcome.decision.passed else "FAILED")
    for reason in outcome.decision.reasons:
        logger.info(reason)
    return outcome


@task(name="load-validation", cache_policy=NO_CACHE)
def load_validation_task(settings: Settings, run_id: str) -> ValidationOutcome:
    return load_validation(settings, run_id)
