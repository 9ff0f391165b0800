"""Training tasks: the base model, a training run, the trials of a hyperparameter search."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from fragua.jobs.train import plan_hpo, record_hpo, run_trial, train_model
from fragua.models.tiny import ensure_base_model
from fragua.settings import Settings
from fragua.train.hpo import HpoPlan, HpoResult, Trial, TrialResult
from fragua.train.report import TrainReport

from . import transient_only


@task(name="base-model", cache_policy=NO_CACHE)
def base_model_task(settings: Settings) -> str:
    base = ensure_base_model(settings)
    get_run_logger().info("base model: %s", base)
    return base


# One retry: a killed or preempted training resumes from its newest complete checkpoint.
@task(name="train", retries=1, retry_delay_seconds=5, retry_condition_fn=transient_only, cache_policy=NO_CACHE)
def train_task(settings: Settings, dataset_id: str) -> TrainReport:
    logger = get_run_logger()
    progress = create_progress_artifact(progress=0.0, description="Training progress (optimiser steps)")

    def on_progress(event: dict[str, Any]) -> None:
        logger.info(
            "step %s/%s loss %.4f lr %.2e %s tokens/s eta %ss",
            event["step"], event["max_steps"], event["loss"], event["learning_rate"], event["tokens_per_second"] or "-", event["eta_seconds"],
        )
        update_progress_artifact(progress, progress=100.0 * event["step"] / max(event["max_steps"], 1))

    report = train_model(settings, dataset_id, progress=on_progress)
    update_progress_artifact(progress, progress=100.0)
    logger.info(
        "run %s: %d steps, train loss %s, eval loss %s%s",
        report.run_id, report.global_step, report.train_loss, report.eval_loss,
        f", resumed from {report.resumed_from}" if report.resumed_from else "",
    )
    return report


@task(name="hpo-plan", cache_policy=NO_CACHE)
def hpo_plan_task(settings: Settings, dataset_id: str) -> HpoPlan:
    plan = plan_hpo(settings, dataset_id)
    get_run_logger().info("hyperparameter search: %d trials, %s minutes", len(plan.trials), settings.hpo.time_budget_minutes)
    return plan


# A retry resumes the trial's run from its newest complete checkpoint, like the train task.
@task(name="hpo-trial", retries=1, retry_delay_seconds=5, retry_condition_fn=transient_only, cache_policy=NO_CACHE,
      task_run_name="trial-{trial.number}")
def hpo_trial_task(settings: Settings, dataset_id: str, trial: Trial, deadline: float) -> TrialResult:
    result = run_trial(settings, dataset_id, trial, deadline)
    get_run_logger().info(
        "trial %d (lr %g, r %d, alpha %d, epochs %g): %s, validation loss %s",
        trial.number, trial.learning_rate, trial.r, trial.alpha, trial.epochs, result.status, result.eval_loss,
    )
    return result


@task(name="hpo-record", cache_policy=NO_CACHE)
def hpo_record_task(settings: Settings, dataset_id: str, results: list[TrialResult]) -> HpoResult:
    return record_hpo(settings, dataset_id, results)
