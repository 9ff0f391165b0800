"""The deploy and rollback flows on the S3 server, with the server failing under them.

Each test deploys a real validated run of the tiny model (trained once per session for a
couple of steps) through Prefect; faults come from the test server, never from a patched
client: 5xx answers, or the server stopped with every connection cut.
"""

from __future__ import annotations

import shutil

import pytest

from fragua.jobs.registry import clean_registry
from fragua.jobs.validate import load_validation, record_validation
from fragua.registry import open_registry
from fragua.registry.versions import PRODUCTION
from fragua.settings import Settings
from fragua.storage import open_store

from .conftest import QUICK
from .s3server import SECRET_KEY

pytestmark = pytest.mark.e2e



@pytest.fixture
def deploy_settings(validated_work, s3_settings, tmp_path) -> tuple[Settings, str]:
    template, run_id = validated_work
    work = tmp_path / "work"
    shutil.copytree(template, work)
    registry = {**s3_settings.model_dump(), "secret_access_key": SECRET_KEY}
    return Settings(work_dir=work, registry=registry, **QUICK), run_id


def revalidate_against_production(settings: Settings, run_id: str) -> None:
    """Record the run's validation again, now compared with the current production version."""
    outcome = load_validation(settings, run_id)
    production = open_registry(settings).production()
    record_validation(settings, run_id, outcome.dataset_id, outcome.candidate, None, outcome.candidate, production.version)


def assert_production_is_complete(settings: Settings) -> None:
    state = open_registry(settings).production()
    if state is not None:
        open_registry(settings).confirm(PRODUCTION, state.version)


def all_objects(settings: Settings) -> list[str]:
    return open_store(settings).list_keys("")


def test_deploy_rollback_and_retention_on_s3(prefect_api, deploy_settings, s3_server):
    from fragua.flows.deploy import deploy_flow, rollback_flow

    settings, run_id = deploy_settings
    first = deploy_flow(settings, run_id)
    assert first.promoted and first.version == "fragua-tiny-v1" and first.report_path.startswith("s3://")
    revalidate_against_production(settings, run_id)
    second = deploy_flow(settings, run_id)
    assert second.production == "fragua-tiny-v2"

    registry = open_registry(settings)
    manifest = registry.manifest("fragua-tiny-v2")
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md", "eval.json", "report.md"} <= set(manifest.files)
    assert manifest.lineage["prefect_flow_run_id"] and manifest.lineage["parent_version"] == "fragua-tiny-v1"
    store = open_store(settings)
    for key in all_objects(settings):
        assert SECRET_KEY.encode() not in store.get_bytes(key)[0], f"the secret key leaked into {key}"
    assert all(key.startswith("models/fragua/") for key in all_objects(settings))
    assert store.client.list_objects_v2(Bucket=store.bucket)["Contents"][0]["Key"].startswith("team/registry/models/fragua/")

    state = rollback_flow(settings).production
    assert (state.version, state.previous) == ("fragua-tiny-v1", "fragua-tiny-v2")
    assert [(e.alias, e.to_version) for e in registry.history()][-2:] == [("production", "fragua-tiny-v1"), ("previous", "fragua-tiny-v2")]

    # keep_last=1 after a third deploy: v3 is the newest, v1 is production, v2 is previous.
    revalidate_against_production(settings, run_id)
    kept = settings.model_copy(update={"registry": settings.registry.model_copy(update={"keep_last": 1})})
    assert deploy_flow(kept, run_id).production == "fragua-tiny-v3"
    assert [m.version for m in registry.versions()] == ["fragua-tiny-v1", "fragua-tiny-v3"]  # v2 expired, v1 is previous


def test_5xx_answers_are_retried_and_the_deploy_completes(prefect_api, deploy_settings, s3_server):
    from fragua.flows.deploy import deploy_flow

    settings, run_id = deploy_settings
    uploads = s3_server.fail("PUT", "/versions/", times=3, status=503)  # absorbed by botocore's retries
    # Both attempts botocore makes (registry.max_attempts=2) fail: the publish task itself retries.
    manifests = s3_server.fail("PUT", "/manifest.json", times=2, status=500)
    outcome = deploy_flow(settings, run_id)
    assert len(uploads.hits) == 3 and len(manifests.hits) == 2
    weights_puts = [p for m, p in s3_server.requests if m == "PUT" and p.endswith("fragua-tiny-v1/adapter_model.safetensors")]
    assert len(weights_puts) >= 2  # uploaded again by the retried task
    assert outcome.promoted and outcome.version == "fragua-tiny-v1"  # retried into the same version
    assert [key for key in all_objects(settings) if "/allocations/" in key] == ["models/fragua/allocations/v1.json"]
    assert_production_is_complete(settings)


def test_server_stopped_mid_upload_the_deploy_retries_and_completes(prefect_api, deploy_settings, s3_server):
    from fragua.flows.deploy import deploy_flow

    settings, run_id = deploy_settings
    s3_server.on_stop = lambda: s3_server.restart_after(1.0)
    try:
        stop = s3_server.stop_on("PUT", "/versions/fragua-tiny-v1/", after=2)  # two files in, then down
        outcome = deploy_flow(settings, run_id)
    finally:
        s3_server.on_stop = None
    assert stop.hits and s3_server.running
    assert outcome.promoted and outcome.version == "fragua-tiny-v1"
    assert_production_is_complete(settings)
    open_registry(settings).fetch("fragua-tiny-v1")  # every checksum matches


def test_server_down_for_good_leaves_no_visible_version_and_production_unchanged(prefect_api, deploy_settings, s3_server, monkeypatch):
    from fragua.flows import deploy as deploy_module
    from fragua.flows.deploy import deploy_flow
    from fragua.storage.store import StoreError

    settings, run_id = deploy_settings
    assert deploy_flow(settings, run_id).production == "fragua-tiny-v1"
    revalidate_against_production(settings, run_id)
    # Real retries, shorter waits: the test is about the outcome, not the backoff schedule.
    monkeypatch.setattr(deploy_module, "publish_task", deploy_module.publish_task.with_options(retry_delay_seconds=[0.1, 0.1, 0.1]))
    s3_server.stop_on("PUT", "/versions/fragua-tiny-v2/", after=1)
    # One request at a time: the first file is complete when the second PUT takes the server
    # down (in parallel, cutting the connections could cut the first one short too).
    one_at_a_time = settings.model_copy(update={"registry": settings.registry.model_copy(update={"max_concurrency": 1})})
    with pytest.raises(StoreError):
        deploy_flow(one_at_a_time, run_id)
    s3_server.start()  # the server comes back: what does a user see?
    registry = open_registry(settings)
    assert [m.version for m in registry.versions()] == ["fragua-tiny-v1"]
    assert registry.alias(PRODUCTION)[0].version == "fragua-tiny-v1"
    assert_production_is_complete(settings)
    report = clean_registry(settings, grace_minutes=0)
    assert report.unfinished == ["fragua-tiny-v2"]
    assert not [k for k in all_objects(settings) if "/versions/fragua-tiny-v2/" in k]


def test_a_failed_check_after_the_move_restores_production(prefect_api, deploy_settings, s3_server):
    from fragua.flows.deploy import deploy_flow
    from fragua.storage.store import StoreError

    settings, run_id = deploy_settings
    assert deploy_flow(settings, run_id).production == "fragua-tiny-v1"
    revalidate_against_production(settings, run_id)
    # Once production has moved to v2, every HEAD of v2's files fails: the confirmation cannot pass.
    s3_server.fail("HEAD", "/versions/fragua-tiny-v2/", times=1000, status=503, armed_by=("PUT", "/aliases/production.json"))
    with pytest.raises(StoreError):
        deploy_flow(settings, run_id)
    registry = open_registry(settings)
    assert registry.alias(PRODUCTION)[0].version == "fragua-tiny-v1"
    assert registry.alias("previous") == (None, None)
    moves = [(e.alias, e.from_version, e.to_version) for e in registry.history()]
    assert moves[-4:] == [
        ("production", "fragua-tiny-v1", "fragua-tiny-v2"), ("previous", None, "fragua-tiny-v1"),   # the move
        ("production", "fragua-tiny-v2", "fragua-tiny-v1"), ("previous", "fragua-tiny-v1", None),   # the rollback hook
    ]
    assert all("rolled back" in event.reason for event in registry.history()[-2:])
    # v2 stays published (it passed verification); promoting it is one command away.
    assert [m.version for m in registry.versions()] == ["fragua-tiny-v1", "fragua-tiny-v2"]
