from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from fragua import jobs
from fragua.evaluation import Evaluation
from fragua.settings import Settings
from fragua.training import TrainReport

from . import transient_only


@task(name="base-model", cache_policy=NO_CACHE)
def base_model_task(settings: Settings) -> str:
    base = jobs.ensure_base_model(settings)
    get_run_logger().info("base model: %s", base)
    return base


# One retry: a killed or preempted training resumes from its newest complete checkpoint.
@task(name="train", retries=1, retry_delay_seconds=5, retry_condition_fn=transient_only, cache_policy=NO_CACHE)
def train_task(settings: Settings, dataset_id: str) -> TrainReport:
    logger = get_run_logger()
    progress = create_progress_artifact(progress=0.0, description="Training progress (optimiser steps)")

    def on_progress(event: dict[str, Any]) -> None:
        logger.info(
            "step %s/%s loss %.4f lr %.2e eta %ss",
            event["step"], event["max_steps"], event["loss"], event["learning_rate"], event["eta_seconds"],
        )
        update_progress_artifact(progress, progress=100.0 * event["step"] / max(event["max_steps"], 1))

    report = jobs.train_model(settings, dataset_id, progress=on_progress)
    update_progress_artifact(progress, progress=100.0)
    logger.info(
        "run %s: %d steps, train loss %s, eval loss %s%s",
        report.run_id, report.global_step, report.train_loss, report.eval_loss,
        f", resumed from {report.resumed_from}" if report.resumed_from else "",
    )
    return report


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(settings: Settings, dataset_id: str, model_path: str, name: str) -> Evaluation:
    evaluation = jobs.evaluate_model(settings, dataset_id, model_path, name=name)
    overall = evaluation.overall
    scores = ", ".join(f"{metric} {overall.value(metric):.4f}" for metric in ["loss", "perplexity", *overall.measured()] if overall.value(metric) is not None)
    get_run_logger().info("%s on %d examples: %s", name, overall.n, scores)
    return evaluation
