"""Per-shard work as Prefect task runs on the task runner that ``scale.task_runner`` names."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from fragua.data.expand_shards import ExpandShard
from fragua.data.records import Record
from fragua.data.screening import HeldOutGuard
from fragua.data.shards import ShardMapper, ShardWork, in_order, pack, prepare_shard, unpack
from fragua.inference.choice import ModelChoice
from fragua.settings import ScaleSettings, Settings
from fragua.validate.batch import BatchResult, ShardScorer, run_eval_batch, score_shard
from fragua.validate.scoring import EvalItem, ItemResult


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
    return prepare_shard(work)


def shard_mapper(scale: ScaleSettings) -> ShardMapper:
    """Submit one ``prepare-shard`` task run per shard, at most ``scale.shards_in_flight`` unmerged."""

    def run(works: Iterator[ShardWork]) -> Iterator[list[Any]]:
        with task_runner(scale) as runner:
            yield from in_order(lambda work: runner.submit(prepare_shard_task, {"work": work}), works, scale.shards_in_flight)

    return run


@task(name="held-out-guard", cache_policy=NO_CACHE, persist_result=False)
def held_out_guard_task(held_out: bytes, threshold: float) -> HeldOutGuard:
    return HeldOutGuard(unpack(held_out), threshold)


@task(name="prepare-expand-shard", cache_policy=NO_CACHE, persist_result=False, task_run_name="{label}")
def expand_shard_task(label: str, work: bytes, guard: HeldOutGuard | None = None) -> bytes:
    return pack(unpack(work).run(guard))


class _Unpacked:
    def __init__(self, future: Any) -> None:
        self.future = future

    def result(self) -> Any:
        return unpack(self.future.result())


class TaskShards:
    """Expand's shards as ``prepare-expand-shard`` task runs, with the held-out guard sent to each
    worker once: scattered to every Dask worker, or built by a ``held-out-guard`` task whose result
    the shards take as a future (Ray keeps it in its object store). Shards and their results travel
    pickled: Prefect would otherwise walk every record of every shard looking for futures, and Dask
    hash them all for a key (measured: 57 s -> 37 s of an expand of 20,000 rows on Dask)."""

    def __init__(self, runner: TaskRunner) -> None:
        self.runner = runner

    def share(self, guard: HeldOutGuard, held_out: Sequence[Record]) -> Any:
        client = getattr(self.runner, "client", None)  # a DaskTaskRunner's
        if client is not None:
            # As a task result on one worker, Dask would run every shard that needs it there, one by one (measured).
            return client.scatter(guard, broadcast=True, hash=False)
        return self.runner.submit(held_out_guard_task, {"held_out": pack(list(held_out)), "threshold": guard.threshold})

    def submit(self, work: ExpandShard, guard: Any = None) -> _Unpacked:
        return _Unpacked(self.runner.submit(expand_shard_task, {"label": work.label, "work": pack(work), "guard": guard}))


@contextmanager
def expand_shards(scale: ScaleSettings) -> Iterator[TaskShards]:
    with task_runner(scale) as runner:
        yield TaskShards(runner)


@task(name="score-questions", cache_policy=NO_CACHE, persist_result=False, task_run_name="score questions from {items[0].id}")
def score_shard_task(settings: Settings, choice: ModelChoice, items: list[EvalItem]) -> list[ItemResult]:
    return score_shard(settings, choice, items)


def eval_mapper(settings: Settings, choice: ModelChoice) -> ShardScorer:
    """One ``score-questions`` task run per shard of questions, at most ``scale.shards_in_flight`` unmerged."""

    def run(shards: Iterator[list[EvalItem]]) -> Iterator[list[ItemResult]]:
        with task_runner(settings.scale) as runner:

            def submit(items: list[EvalItem]) -> Any:
                return runner.submit(score_shard_task, {"settings": settings, "choice": choice, "items": items})

            yield from in_order(submit, shards, settings.scale.shards_in_flight)

    return run


@task(name="eval-batch", cache_policy=NO_CACHE)
def eval_batch_task(settings: Settings, questions: str, choice: ModelChoice, output: str) -> BatchResult:
    return run_eval_batch(settings, Path(questions), choice, Path(output), score_shards=eval_mapper(settings, choice), shard_items=settings.scale.eval_shard_items)
