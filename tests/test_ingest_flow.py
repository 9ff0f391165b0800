"""The ingest flow through Prefect: cache hits on identical inputs, artifacts."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

from .conftest import EXAMPLES, make_settings


def _task_states(flow_run_id) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read() -> list[str]:
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return [run.state.name for run in runs if run.name.startswith("ingest-sources")]

    return asyncio.run(read())


def _artifacts(flow_run_id) -> dict[str, str]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read() -> dict[str, str]:
        async with get_client() as client:
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
            return {a.key: a.type for a in artifacts}

    return asyncio.run(read())


def _run(settings):
    from fragua.flows.ingest import ingest_flow

    state = ingest_flow(settings, return_state=True)
    return state.result(), state.state_details.flow_run_id


def test_identical_reingest_is_a_cache_hit_and_changed_data_is_not(prefect_api, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(EXAMPLES, data)
    settings = make_settings(tmp_path / "work", data={"sources": [{"path": str(data)}]})

    first, first_run = _run(settings)
    second, second_run = _run(settings)
    assert second.id == first.id
    assert _task_states(first_run) == ["Completed"]
    assert _task_states(second_run) == ["Cached"]
    assert _artifacts(first_run) == {"dataset": "markdown", "dataset-domains": "table"}

    with (data / "batch1" / "hotel_faq.jsonl").open("a") as handle:
        handle.write(json.dumps({"instruction": "Is there a sauna?", "output": "Yes, next to the pool.", "domain": "hotel"}) + "\n")
    changed, changed_run = _run(settings)
    assert changed.id != first.id and _task_states(changed_run) == ["Completed"]

    shutil.rmtree(changed.path)  # the version a cache hit would point at is gone
    rebuilt, rebuilt_run = _run(settings)
    assert _task_states(rebuilt_run) == ["Completed"]
    assert rebuilt.id == changed.id and Path(rebuilt.path, "manifest.json").is_file()
    again, again_run = _run(settings)
    assert _task_states(again_run) == ["Cached"] and again.id == changed.id


def test_other_data_settings_miss_the_cache(prefect_api, tmp_path):
    base = make_settings(tmp_path / "work", data={"sources": [{"path": str(EXAMPLES / "batch1")}]})
    reseeded = make_settings(tmp_path / "work", data={"sources": [{"path": str(EXAMPLES / "batch1")}], "split_seed": 99})
    first, _ = _run(base)
    other, other_run = _run(reseeded)
    assert other.id != first.id and _task_states(other_run) == ["Completed"]
