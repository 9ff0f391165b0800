"""Forgetting-check tasks: general benchmarks on base, production and candidate; learning and forgetting on the team's own examples."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fragua.jobs.forgetting import benchmark_comparison, retention_check
from fragua.settings import Settings
from fragua.validate.benchmarks import BenchmarkComparison
from fragua.validate.retention import Retention

from . import STORAGE_RETRY_DELAYS, transient_only

# Both may fetch the production version from storage; a retry reuses what was already scored.
_STORAGE = dict(retries=3, retry_delay_seconds=STORAGE_RETRY_DELAYS, retry_condition_fn=transient_only, cache_policy=NO_CACHE)


@task(name="benchmarks", **_STORAGE)
def benchmarks_task(settings: Settings, run_id: str, production_version: str | None) -> BenchmarkComparison | None:
    comparison = benchmark_comparison(settings, run_id, production_version)
    if comparison is not None:
        logger = get_run_logger()
        for name in comparison.tasks:
            score = comparison.candidate[name]
            logger.info("benchmark %s: candidate %s %.4f on %d questions", name, score.metric, score.value, score.questions)
    return comparison


@task(name="retention", **_STORAGE)
def retention_task(settings: Settings, run_id: str, production_version: str | None) -> Retention | None:
    retention = retention_check(settings, run_id, production_version)
    if retention is not None:
        get_run_logger().info("retention: scored %s", ", ".join(f"{group.n} {group.name}" for group in retention.groups))
    return retention
