from __future__ import annotations

import json
import time

import pytest

from fragua.jobs.train import run_trial
from fragua.settings import HpoSettings, Settings
from fragua.train.hpo import Trial, TrialResult, best_trial, sample_trials, trial_settings

from .conftest import EXAMPLES, make_settings


def test_the_whole_grid_runs_when_it_fits_the_trial_count():
    trials = sample_trials(HpoSettings(trials=10, learning_rates=[1e-3, 2e-3], ranks=[8, 16], epochs=[1.0]))
    assert [(t.learning_rate, t.r, t.alpha) for t in trials] == [(1e-3, 8, 16), (1e-3, 16, 32), (2e-3, 8, 16), (2e-3, 16, 32)]
    assert [t.number for t in trials] == [1, 2, 3, 4]


def test_a_larger_grid_is_sampled_reproducibly_without_repeats():
    hpo = HpoSettings(trials=5, learning_rates=[1e-4, 3e-4, 1e-3], ranks=[8, 16, 32], alphas=[16, 64], epochs=[1.0, 2.0])
    trials = sample_trials(hpo)
    assert len(trials) == 5 and trials == sample_trials(hpo)
    assert len({(t.learning_rate, t.r, t.alpha, t.epochs) for t in trials}) == 5
    assert trials != sample_trials(hpo.model_copy(update={"seed": 1}))


def test_best_trial_has_the_lowest_validation_loss_and_unscored_trials_never_win():
    trial = Trial(number=1, learning_rate=1e-3, r=8, alpha=16, epochs=1)
    results = [
        TrialResult(trial=trial, status="finished", eval_loss=2.0),
        TrialResult(trial=trial.model_copy(update={"number": 2}), status="skipped (time budget)"),
        TrialResult(trial=trial.model_copy(update={"number": 3}), status="finished", eval_loss=1.5),
    ]
    assert best_trial(results).trial.number == 3
    assert best_trial(results[1:2]) is None


def test_trial_settings_replace_only_the_searched_values():
    settings = Settings(train={"batch_size": 4})
    chosen = trial_settings(settings, Trial(number=1, learning_rate=1e-4, r=4, alpha=8, epochs=3))
    assert (chosen.train.learning_rate, chosen.train.lora.r, chosen.train.lora.alpha, chosen.train.epochs) == (1e-4, 4, 8, 3)
    assert chosen.train.batch_size == 4 and settings.train.lora.r == 64  # the original is untouched


def test_a_trial_after_the_deadline_is_skipped(tmp_path):
    trial = Trial(number=1, learning_rate=1e-3, r=8, alpha=16, epochs=1)
    result = run_trial(make_settings(tmp_path), "no-such-dataset", trial, deadline=time.time() - 1)
    assert result.status == "skipped (time budget)" and result.eval_loss is None


@pytest.mark.slow
def test_hpo_flow_runs_trials_as_tasks_and_records_them(prefect_api, tmp_path):
    from prefect import get_client

    from fragua.flows.hpo import hpo_flow

    settings = make_settings(
        tmp_path / "work",
        data={"sources": [{"path": str(EXAMPLES / "batch1")}]},
        train={"batch_size": 16, "save_steps": 100},
        hpo={"trials": 2, "learning_rates": [1e-5, 5e-3], "ranks": [16], "epochs": [2.0]},
        tracking={"mode": "offline"},
    )
    result = hpo_flow(settings)
    assert [t.status for t in result.trials] == ["finished", "finished"]
    assert all(t.eval_loss is not None and t.run_id for t in result.trials)
    assert result.trials[0].run_id != result.trials[1].run_id
    # A learning rate of 1e-5 barely moves the adapters; 5e-3 learns the data.
    assert result.best.trial.learning_rate == 5e-3 and result.best.eval_loss == min(t.eval_loss for t in result.trials)
    stored = json.loads(open(result.report_path).read())
    assert stored["best"]["run_id"] == result.best.run_id
    assert result.tracking_run and list((tmp_path / "work" / "wandb" / "wandb").glob("offline-run-*"))

    async def artifacts_and_tasks():
        async with get_client() as client:
            artifacts = await client.read_artifacts()
            runs = await client.read_task_runs()
            return {a.key for a in artifacts}, [r.name for r in runs]

    import asyncio

    keys, task_names = asyncio.run(artifacts_and_tasks())
    assert {"hpo-trials", "hpo"} <= keys
    assert {"trial-1", "trial-2"} <= set(task_names)
