"""Hyperparameter search: which trials to run and which one won (pure functions)."""

from __future__ import annotations

import itertools
import random

from pydantic import BaseModel, Field

from fragua.settings import HpoSettings, Settings


class Trial(BaseModel):
    number: int
    learning_rate: float
    r: int
    alpha: int
    epochs: float


class TrialResult(BaseModel):
    trial: Trial
    status: str = Field(description="finished, stopped by time budget, skipped (time budget) or failed: <reason>.")
    run_id: str | None = None
    eval_loss: float | None = None
    train_loss: float | None = None
    global_step: int = 0
    seconds: float = 0.0


class HpoPlan(BaseModel):
    dataset_id: str
    trials: list[Trial]
    deadline: float = Field(description="time.time() after which no trial starts and running ones stop.")


class HpoResult(BaseModel):
    dataset_id: str
    trials: list[TrialResult]
    best: TrialResult | None
    report_path: str | None = None
    tracking_run: str | None = None


def sample_trials(hpo: HpoSettings) -> list[Trial]:
    """Every point of the candidate grid when it has at most ``hpo.trials``, else a seeded random draw."""
    pairs = [(r, a) for r in hpo.ranks for a in (hpo.alphas or [2 * r])]
    grid = list(itertools.product(hpo.learning_rates, pairs, hpo.epochs))
    if len(grid) > hpo.trials:
        grid = random.Random(hpo.seed).sample(grid, hpo.trials)
    return [Trial(number=i, learning_rate=lr, r=r, alpha=alpha, epochs=epochs) for i, (lr, (r, alpha), epochs) in enumerate(grid, 1)]


def trial_settings(settings: Settings, trial: Trial) -> Settings:
    """The settings of one trial: the searched values replace the configured ones."""
    chosen = settings.model_copy(deep=True)
    chosen.train.learning_rate = trial.learning_rate
    chosen.train.epochs = trial.epochs
    chosen.train.lora.r = trial.r
    chosen.train.lora.alpha = trial.alpha
    return chosen


def best_trial(results: list[TrialResult]) -> TrialResult | None:
    """The trial with the lowest validation loss (trials without one never win)."""
    scored = [r for r in results if r.eval_loss is not None]
    return min(scored, key=lambda r: r.eval_loss, default=None)


def trial_rows(results: list[TrialResult]) -> list[dict[str, object]]:
    """One row per trial for the Prefect table artifact and the W&B table."""
    return [
        {
            "trial": r.trial.number,
            "learning_rate": r.trial.learning_rate,
            "r": r.trial.r,
            "alpha": r.trial.alpha,
            "epochs": r.trial.epochs,
            "status": r.status,
            "eval_loss": r.eval_loss,
            "train_loss": r.train_loss,
            "steps": r.global_step,
            "seconds": r.seconds,
            "run_id": r.run_id,
        }
        for r in results
    ]
