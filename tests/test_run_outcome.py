"""A pipeline run states its outcome where the Prefect UI shows it: the run's name, its final
state's name and message, its tags, a summary artifact, and task runs named for what they score."""

from __future__ import annotations


import pytest

from fragua.reports.outcome import NOT_PROMOTED, PROMOTED, REJECTED, CandidateOutcome, candidate_verdict
from fragua.settings import Settings

from .conftest import EXAMPLES, QUICK
from .prefect_runs import flow_runs, latest_artifact, tagged, task_runs


@pytest.fixture
def run_logs_at_info():
    """Flow-run logs at INFO, as a worker sends them to the UI, whatever PREFECT_LOGGING_LEVEL the
    suite runs with (`make test` sets WARNING): the outcome line is an INFO line. Set through
    Prefect's settings, so a re-run of its logging set-up during the test keeps it."""
    from prefect.logging.configuration import setup_logging
    from prefect.settings import PREFECT_LOGGING_LEVEL, temporary_settings

    with temporary_settings(updates={PREFECT_LOGGING_LEVEL: "INFO"}):
        setup_logging()
        yield
    setup_logging()


def _top_level(tag: str):
    [run] = [run for flow, run in flow_runs(tag) if flow == "pipeline" and run.parent_task_run_id is None]
    return run


def _last_log_lines(run, count: int = 2) -> list[str]:
    """The run's last log lines, once they reached the server (they are shipped in the
    background; the flow's own "Finished in state" line comes last — each task ends with
    one too, so waiting for any of them can read the logs before the flow's last lines)."""
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    async def read() -> list[str]:
        async with get_client() as client:
            for _ in range(240):
                logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), sort=LogSort.TIMESTAMP_DESC, limit=count)
                if logs and logs[0].task_run_id is None and logs[0].message.startswith("Finished in state"):
                    break
                await asyncio.sleep(0.5)
            return [log.message for log in reversed(logs)]

    return asyncio.run(read())


@pytest.mark.e2e
@pytest.mark.slow(seconds=60)
def test_pipeline_runs_name_promoted_and_not_promoted_with_a_summary(prefect_api, tiny_base, tmp_path, run_logs_at_info):
    from fragua.flows.pipeline import pipeline_flow

    data = {"sources": [{"path": str(EXAMPLES / "batch1")}]}
    quick = {**QUICK, "train": {**QUICK["train"], "base_model": str(tiny_base)}}
    with tagged() as first:
        promoted = pipeline_flow(Settings(work_dir=tmp_path / "work", data=data, **quick))
    assert promoted.promoted and promoted.version == "fragua-tiny-v1"  # the flow call still returns the result

    run = _top_level(first)
    assert run.name == "pipeline-batch1"
    assert run.state.type.value == "COMPLETED" and run.state.name == PROMOTED
    assert run.state.message == "fragua-tiny-v1 promoted to production (was unset)"
    assert {"model:fragua", "version:fragua-tiny-v1"} <= set(run.tags)
    assert _last_log_lines(run) == [  # ours, then Prefect's
        "Promoted: fragua-tiny-v1 promoted to production (was unset)",
        "Finished in state Promoted('fragua-tiny-v1 promoted to production (was unset)', type=COMPLETED)",
    ]
    subflows = {flow: sub.name for flow, sub in flow_runs(first) if sub.parent_task_run_id is not None}
    assert subflows == {
        "ingest": "ingest-batch1", "train": f"train-{promoted.dataset_id}", "validate": f"validate-{promoted.run_id}",
        "deploy": f"deploy-{promoted.run_id}",
    }
    summary = latest_artifact(first, "pipeline")
    assert summary.flow_run_id == run.id
    assert summary.data.startswith("# Pipeline: Promoted")
    for fact in (f"| dataset | `{promoted.dataset_id}` |", f"| training run | `{promoted.run_id}` |", "| promoted | yes |",
                 "| production before | `unset` |", "| production after | `fragua-tiny-v1` |", f"`{promoted.report_path}`"):
        assert fact in summary.data, fact
    evaluations = {task.name for task in task_runs(first, name_like="evaluate")}
    assert {"evaluate-candidate", "evaluate-base"} <= evaluations and not any("production" in e for e in evaluations)

    # Development-style: validated and registered, production left where it is.
    registered = Settings(
        work_dir=tmp_path / "work", data=data, registry={"auto_deploy": False},
        **{**quick, "validate": {**quick["validate"], "regression_tolerance": 1.0}},
    )
    with tagged() as second:
        kept = pipeline_flow(registered)
    assert kept.passed and not kept.promoted and kept.version == "fragua-tiny-v2"
    run = _top_level(second)
    assert run.state.type.value == "COMPLETED" and run.state.name == NOT_PROMOTED
    assert run.state.message.startswith("fragua-tiny-v2 passed validation and is registered, not promoted")
    assert run.state.message.endswith("production stays fragua-tiny-v1")
    assert {"model:fragua", "version:fragua-tiny-v2"} <= set(run.tags)
    assert _last_log_lines(run)[0] == f"Not promoted: {run.state.message}"
    summary = latest_artifact(second, "pipeline").data
    assert "| promoted | no |" in summary and "| production before | `fragua-tiny-v1` |" in summary
    assert "deploy/default" in summary and "fragua deploy --version fragua-tiny-v2" in summary
    evaluations = {task.name for task in task_runs(second, name_like="evaluate")}
    assert {"evaluate-candidate", "evaluate-base", "evaluate-production-fragua-tiny-v1"} <= evaluations


def _outcome(**changes) -> CandidateOutcome:
    given = dict(dataset_id="ds", run_id="run-1", passed=True, version="m-v2", promoted=True, production_before="m-v1",
                 production="m-v2", report_path="/r.md", reasons=["PASS token_f1 0.5 >= 0.1"])
    return CandidateOutcome(**{**given, **changes})


def test_the_verdict_names_promoted_not_promoted_and_rejected_apart():
    assert candidate_verdict(_outcome()).name == PROMOTED
    assert candidate_verdict(_outcome(promoted=False, production="m-v1")).name == NOT_PROMOTED
    rejected = candidate_verdict(_outcome(
        passed=False, promoted=False, version=None, production="m-v1",
        reasons=["PASS loss", "FAIL token_f1 0.01 < 0.1", "FAIL loss 9 > 2"],
    ))
    assert rejected == type(rejected)(REJECTED, "validation rejected run run-1: FAIL token_f1 0.01 < 0.1 (+1 more); production stays m-v1")


@pytest.mark.e2e
def test_a_registered_version_promoted_through_the_deploy_flow_says_so(prefect_api, validated_work, tmp_path, run_logs_at_info):
    """What `deploy/default` with `version` does from the UI, after a run that only registered it."""
    import shutil

    from fragua.flows.deploy import deploy_flow

    template, run_id = validated_work
    shutil.copytree(template, tmp_path / "work")
    registering = Settings(work_dir=tmp_path / "work", registry={"auto_deploy": False}, **QUICK)
    with tagged() as tag:
        registered = deploy_flow(registering, run_id)
    assert registered.version == "fragua-tiny-v1" and not registered.promoted
    [(_, run)] = flow_runs(tag)
    assert (run.name, run.state.name) == (f"deploy-{run_id}", NOT_PROMOTED)
    hint = [line for line in _last_log_lines(run, 6) if "is registered" in line]
    assert hint and "deploy/default" in hint[0] and "version = fragua-tiny-v1" in hint[0] and "fragua deploy --version fragua-tiny-v1" in hint[0]

    with tagged() as tag:
        promoted = deploy_flow(Settings(work_dir=tmp_path / "work", **QUICK), version="fragua-tiny-v1")
    assert promoted.promoted and promoted.production == "fragua-tiny-v1"
    [(_, run)] = flow_runs(tag)
    assert (run.name, run.state.name) == ("deploy-fragua-tiny-v1", PROMOTED)
    assert run.state.message == "fragua-tiny-v1 promoted to production (was unset) by a manual deploy"
    assert {"model:fragua", "version:fragua-tiny-v1"} <= set(run.tags)
