"""Per-shard work as Prefect task runs on the task runner that ``scale.task_runner`` names."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from fragua import jobs
from fragua.batch_eval import BatchResult, ShardScorer
from fragua.evaluation import EvalItem, ItemResult
from fragua.inference import ModelChoice
from fragua.settings import ScaleSettings, Settings
from fragua.shards import ShardMapper, ShardWork


def task_runner(scale: ScaleSettings) -> TaskRunner:
    """The runner ``scale`` asks for; dask and ray come from the optional extras of the same names."""
    if scale.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=scale.workers)
    if scale.task_runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise ValueError("scale.task_runner 'dask' needs prefect-dask: pip install 'fragua[dask]'") from exc
        if scale.address:
            return DaskTaskRunner(address=scale.address)
        # One thread per worker process: preparing a shard is CPU-bound Python and Arrow work.
        return DaskTaskRunner(cluster_kwargs={"n_workers": scale.workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None})
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:
        raise ValueError("scale.task_runner 'ray' needs prefect-ray: pip install 'fragua[ray]'") from exc
    if scale.address:
        return RayTaskRunner(address=scale.address)
    return RayTaskRunner(init_kwargs={"num_cpus": scale.workers, "include_dashboard": False})


# Pure CPU work on data the parent holds: a failure is a bug or bad input, never transient.
@task(name="prepare-shard", cache_policy=NO_CACHE, persist_result=False, task_run_name="prepare {work.shard.source.name} #{work.shard.index}")
def prepare_shard_task(work: ShardWork) -> list[Any]:
    return jobs.prepare_shard(work)


def shard_mapper(scale: ScaleSettings) -> ShardMapper:
    """Submit one ``prepare-shard`` task run per shard, at most ``scale.shards_in_flight`` unmerged."""

    def run(works: Iterator[ShardWork]) -> Iterator[list[Any]]:
        with task_runner(scale) as runner:
            pending: deque[Any] = deque()
            for work in works:
                pending.append(runner.submit(prepare_shard_task, {"work": work}))
                while len(pending) >= scale.shards_in_flight:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    return run


@task(name="score-questions", cache_policy=NO_CACHE, persist_result=False, task_run_name="score questions from {items[0].id}")
def score_shard_task(settings: Settings, choice: ModelChoice, items: list[EvalItem]) -> list[ItemResult]:
    return jobs.score_question_shard(settings, choice, items)


def eval_mapper(settings: Settings, choice: ModelChoice) -> ShardScorer:
    """One ``score-questions`` task run per shard of questions, at most ``scale.shards_in_flight`` unmerged."""

    def run(shards: Iterator[list[EvalItem]]) -> Iterator[list[ItemResult]]:
        with task_runner(settings.scale) as runner:
            pending: deque[Any] = deque()
            for items in shards:
                pending.append(runner.submit(score_shard_task, {"settings": settings, "choice": choice, "items": items}))
                while len(pending) >= settings.scale.shards_in_flight:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    return run


@task(name="eval-batch", cache_policy=NO_CACHE)
def eval_batch_task(settings: Settings, questions: str, choice: ModelChoice, output: str) -> BatchResult:
    return jobs.eval_batch(settings, Path(questions), choice, Path(output), eval_mapper(settings, choice))
