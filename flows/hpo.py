from __future__ import annotations

from prefect import flow, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from fragua.reports.markdown import display_rows
from fragua.reports.training import TRIAL_DURATIONS, hpo_summary
from fragua.settings import Settings, SettingsParameter
from fragua.tasks.data import ingest_task
from fragua.tasks.train import base_model_task, hpo_plan_task, hpo_record_task, hpo_trial_task
from fragua.train.hpo import HpoResult, trial_rows

from . import notify_failure
from .outcome import named_after


# One trial at a time: each already uses every core (or the GPU) it is given.
@flow(name="hpo", flow_run_name=named_after("hpo", "dataset_id"), on_failure=[notify_failure], task_runner=ThreadPoolTaskRunner(max_workers=1))
def hpo_flow(settings: SettingsParameter | None = None, dataset_id: str | None = None) -> HpoResult:
    """Search learning rate, LoRA rank/alpha and epochs within hpo.trials and hpo.time_budget_minutes."""
    settings = settings or Settings.load()
    if dataset_id is None:
        dataset_id = ingest_task(settings).id
    base_model_task(settings)
    plan = hpo_plan_task(settings, dataset_id)
    trials = hpo_trial_task.map(unmapped(settings), unmapped(plan.dataset_id), plan.trials, unmapped(plan.deadline))
    result = hpo_record_task(settings, plan.dataset_id, [trial.result() for trial in trials])
    create_table_artifact(display_rows(trial_rows(result.trials), TRIAL_DURATIONS), key="hpo-trials", description="Every trial of the hyperparameter search")
    create_markdown_artifact(hpo_summary(result), key="hpo", description="Hyperparameter search")
    return result
