"""What a test's own flow runs left on the suite's Prefect server (shared by every test, and by
xdist workers running at the same time): runs are tagged with a tag of the test's own, and
only runs holding it are read back."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def tagged() -> Iterator[str]:
    """Flow and task runs started inside carry a new tag, which this yields."""
    from prefect import tags

    tag = f"test-{uuid.uuid4().hex[:12]}"
    with tags(tag):
        yield tag


def _read(tag: str, what: str, **filters: Any) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterTags,
        TaskRunFilter,
        TaskRunFilterName,
    )

    async def read() -> list[Any]:
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))
            if what == "flow_runs":
                flows = {flow.id: flow.name for flow in await client.read_flows()}
                return [(flows[run.flow_id], run) for run in runs]
            ids = [run.id for run in runs]
            if what == "task_runs":
                name = TaskRunFilter(name=TaskRunFilterName(like_=filters["name_like"])) if filters.get("name_like") else None
                return await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": ids}), task_run_filter=name)
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=ids), key=ArtifactFilterKey(any_=[filters["key"]])))

    return asyncio.run(read())


def flow_runs(tag: str) -> list[tuple[str, Any]]:
    """(flow name, flow run) of each run holding ``tag``."""
    return _read(tag, "flow_runs")


def task_runs(tag: str, name_like: str | None = None) -> list[Any]:
    return _read(tag, "task_runs", name_like=name_like)


def latest_artifact(tag: str, key: str) -> Any:
    return max(_read(tag, "artifacts", key=key), key=lambda artifact: artifact.created)
