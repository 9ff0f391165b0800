from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from fragua.data.store import DatasetManifest
from fragua.jobs.data import expand_dataset, ingest_cache_key, ingest_sources
from fragua.settings import Settings

from . import STORAGE_RETRY_DELAYS, transient_only
from .scale import expand_shards, shard_mapper


def ingest_task_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    return ingest_cache_key(parameters["settings"])


# Same source contents and data settings: a cache hit returns the stored version's manifest
# (persisted with the task result) without reading the sources again.
@task(
    name="ingest-sources", retries=2, retry_delay_seconds=STORAGE_RETRY_DELAYS[:2], retry_condition_fn=transient_only,
    cache_key_fn=ingest_task_cache_key, persist_result=True,
)
def ingest_task(settings: Settings) -> DatasetManifest:
    # On threads the streaming ingest (its own reader and writer threads) is the faster path:
    # per-shard task runs in one process measured 1.6x slower and ~1.9x the memory (bench/ingest.py).
    mapper = None if settings.scale.task_runner == "threads" else shard_mapper(settings.scale)
    manifest = ingest_sources(settings, mapper)
    get_run_logger().info(
        "dataset %s: %s, %d duplicates, %d quarantined %s",
        manifest.id, manifest.counts, manifest.duplicates, manifest.quarantined, manifest.rejected,
    )
    return manifest


@task(name="expand-train-split", retries=1, retry_delay_seconds=2, retry_condition_fn=transient_only, cache_policy=NO_CACHE)
def expand_task(settings: Settings, dataset_id: str) -> DatasetManifest:
    # On threads the shards run inline: they are pure Python, so threads would only add task-run overhead.
    sharded = settings.scale.task_runner != "threads" and settings.expand.expansion_factor > 1.0
    with expand_shards(settings.scale) if sharded else nullcontext() as shards:
        manifest = expand_dataset(settings, dataset_id, shards)
    report = manifest.report.get("expansion")
    if report is None:
        get_run_logger().info("dataset %s unchanged (expand.expansion_factor is 1.0)", dataset_id)
    else:
        get_run_logger().info(
            "dataset %s -> %s: train %d -> %d (factor %s of %s), added per strategy %s",
            dataset_id, manifest.id, report["train_before"], report["train_after"], report["achieved_factor"], report["target_factor"],
            {name: tally["added"] for name, tally in report["strategies"].items()},
        )
    return manifest
