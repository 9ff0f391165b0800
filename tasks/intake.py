from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fragua.intake import autotrain
from fragua.intake.queue import Batch
from fragua.intake.serving_log import ServingLog
from fragua.registry.canary_decision import VersionStats
from fragua.settings import Settings

from . import STORAGE_RETRY_DELAYS, transient_only

# The queue's database may be a network service: retry what looks like a connection problem.
_QUEUE = dict(retries=2, retry_delay_seconds=STORAGE_RETRY_DELAYS[:2], retry_condition_fn=transient_only, cache_policy=NO_CACHE)


@task(name="release-stale-claims", **_QUEUE)
def release_stale_task(settings: Settings) -> int:
    released = autotrain.open_queue(settings).release_stale()
    if released:
        get_run_logger().warning("%d examples claimed by a run that never finished are pending again", released)
    return released


@task(name="count-pending", **_QUEUE)
def pending_count_task(settings: Settings) -> int:
    return autotrain.open_queue(settings).counts()["pending"]


@task(name="record-skip", **_QUEUE)
def record_skip_task(settings: Settings, run_id: str, pending: int, needed: int, flow_run_id: str | None) -> None:
    autotrain.open_queue(settings).record_skip(run_id, pending, needed, flow_run_id)


@task(name="claim-examples", **_QUEUE)
def claim_task(settings: Settings, run_id: str, flow_run_id: str | None) -> Batch:
    batch = autotrain.open_queue(settings).claim(run_id, limit=settings.intake.max_examples_per_run, flow_run_id=flow_run_id)
    get_run_logger().info("run %s claimed %d examples", run_id, batch.size)
    return batch


@task(name="resolve-duplicates", **_QUEUE)
def resolve_duplicates_task(settings: Settings, batch: Batch) -> autotrain.Resolution:
    resolution = autotrain.resolve_duplicates(settings, batch)
    if resolution.duplicates and resolution.batch.size:  # with nothing left, the run's end says it
        get_run_logger().info("%s", resolution.explain(batch.size))
    return resolution


@task(name="write-intake-batch", cache_policy=NO_CACHE)
def batch_settings_task(settings: Settings, batch: Batch) -> Settings:
    return autotrain.batch_settings(settings, batch)


@task(name="mark-trained", **_QUEUE)
def mark_trained_task(settings: Settings, run_id: str, version: str) -> int:
    done = autotrain.open_queue(settings).mark_trained(run_id, version)
    get_run_logger().info("%d examples trained into %s", done, version)
    return done


@task(name="release-examples", **_QUEUE)
def release_task(settings: Settings, run_id: str, reason: str, state: str = "failed") -> int:
    released = autotrain.open_queue(settings).release(run_id, reason, state=state)
    if released:
        get_run_logger().warning("%d examples of run %s are pending again: %s", released, run_id, reason)
    else:
        get_run_logger().info("run %s: %s", run_id, reason)
    return released


@task(name="serving-stats", **_QUEUE)
def serving_stats_task(settings: Settings, since: datetime | None) -> dict[str, VersionStats]:
    """What each version served (requests, errors, latency, ratings) since ``since``, from the serving log."""
    return ServingLog(settings).version_stats(since)
