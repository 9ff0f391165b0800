"""The canary through Prefect: `fragua deploy --canary`, `promote`, `rollback` during a canary, and the
`canary` flow promoting or dropping from what the serving log recorded. Every move is notified."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fragua.cli import app
from fragua.intake.serving_log import ServedResponse, ServingLog
from fragua.registry import open_registry
from fragua.registry.canary import CANARY
from fragua.settings import Settings

from .conftest import QUICK
from .test_registry import published
from .webhook import WebhookReceiver

runner = CliRunner()


def registry_with_versions(settings: Settings, tmp_path: Path, count: int = 3) -> list[str]:
    """``count`` published versions (small files, not models) in the settings' registry; production on the first."""
    registry = open_registry(settings)
    versions = [published(registry, tmp_path, f"payload-{n}") for n in range(count)]
    registry.promote(versions[0], reason="first deploy")
    return versions


@pytest.fixture
def webhook_settings(tmp_path):
    from fragua.blocks import save_webhook

    with WebhookReceiver() as receiver:
        block = save_webhook(receiver.url, f"canary-alerts-{tmp_path.name[-20:]}".replace("_", "-"))
        settings = Settings(work_dir=tmp_path / "work", tracking={"mode": "disabled"}, notifications={"block": block})
        yield settings, receiver


def test_deploy_canary_promote_and_rollback_from_the_command_line(prefect_api, webhook_settings, tmp_path):
    settings, receiver = webhook_settings
    v1, v2, v3 = registry_with_versions(settings, tmp_path)
    cli = ["--work-dir", str(settings.work_dir), "--set", f"notifications.block={settings.notifications.block}"]

    refused = runner.invoke(app, [*cli, "deploy", "--version", v2, "--canary", "100"], env={"COLUMNS": "200"})
    assert refused.exit_code == 2 and "--canary: a canary's traffic share must be above 0 and below 100 percent, got 100" in refused.output

    started = runner.invoke(app, [*cli, "deploy", "--version", v2, "--canary", "10"], env={"COLUMNS": "200"})
    assert started.exit_code == 0, started.output
    assert f"{v2} (10% of production's requests)" in started.output
    assert open_registry(settings).alias(CANARY)[0].traffic_percent == 10
    status = runner.invoke(app, [*cli, "status"], env={"COLUMNS": "200"})
    assert status.exit_code == 0 and f"{v2} (10% of production's requests)" in status.output

    ended = runner.invoke(app, [*cli, "rollback"], env={"COLUMNS": "200"})
    assert ended.exit_code == 0, ended.output
    assert f"canary {v2} ended; production unchanged: {v1}" in ended.output
    assert open_registry(settings).production().version == v1 and CANARY not in open_registry(settings).aliases()

    assert runner.invoke(app, [*cli, "deploy", "--version", v2, "--canary", "10"]).exit_code == 0
    promoted = runner.invoke(app, [*cli, "promote"], env={"COLUMNS": "200"})
    assert promoted.exit_code == 0, promoted.output
    assert f"production: {v1} -> {v2}; the canary ended" in promoted.output
    nothing = runner.invoke(app, [*cli, "promote"], env={"COLUMNS": "200"})
    assert nothing.exit_code == 2 and f"no canary to promote; production stays {v2}" in nothing.output

    assert runner.invoke(app, [*cli, "deploy", "--version", v3, "--canary", "5"]).exit_code == 0
    moved = runner.invoke(app, [*cli, "rollback", "--to", v1], env={"COLUMNS": "200"})
    assert moved.exit_code == 0, moved.output
    assert f"production: {v2} -> {v1}" in moved.output and f"canary {v3} ended" in moved.output
    aliases = open_registry(settings).aliases()
    assert aliases["production"].version == v1 and CANARY not in aliases

    history = runner.invoke(app, [*cli, "history"], env={"COLUMNS": "250"})
    assert history.exit_code == 0 and f"{v3} (5%)" in history.output
    assert receiver.subjects() == [
        f"Fragua: {v2} is the canary (10%)", f"Fragua: canary {v2} rolled back",
        f"Fragua: {v2} is the canary (10%)", f"Fragua: canary {v2} promoted",
        f"Fragua: {v3} is the canary (5%)", f"Fragua: production rolled back to {v1}",
    ]


def serve(log: ServingLog, version: str, count: int, *, failures: int = 0, rating: int | None = None, start: int = 0) -> None:
    """``count`` responses of ``version`` (the first ``failures`` failed), each successful one rated ``rating``."""
    now = datetime.now(timezone.utc)  # after the canary started: inside the window the flow judges
    for n in range(start, start + count):
        response_id = f"{version}-{n}"
        log.record(ServedResponse(
            response_id=response_id, version=version, requested_model="production", created_at=now, latency_ms=20.0 + n,
            prompt_tokens=10, completion_tokens=5, ok=n - start >= failures, error_type=None if n - start >= failures else "generation_failed",
        ))
        if rating is not None and n - start >= failures:
            log.feedback(response_id, rating)


def canary_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"registry": settings.registry.model_copy(update={
        "canary": settings.registry.canary.model_copy(update={"min_requests": 20, "min_ratings": 5}),
    })})


def test_the_canary_flow_promotes_a_canary_no_worse_than_production(prefect_api, webhook_settings, tmp_path):
    from fragua.flows.canary import canary_flow
    from fragua.registry.canary import start_canary

    settings, receiver = webhook_settings
    settings = canary_settings(settings)
    v1, v2, _ = registry_with_versions(settings, tmp_path)
    assert canary_flow(settings).action == "none"
    start_canary(open_registry(settings), v2, 20, reason="test")
    log = ServingLog(settings)

    serve(log, v2, 10, rating=1)
    waiting = canary_flow(settings)
    assert waiting.action == "wait" and "served 10 of the 20 requests needed" in waiting.reasons[0]
    assert open_registry(settings).alias(CANARY)[0].version == v2

    serve(log, v1, 80, failures=1, rating=1)
    serve(log, v2, 20, start=10)
    outcome = canary_flow(settings)
    assert outcome.action == "promote", outcome.reasons
    assert (outcome.canary_stats.requests, outcome.production_stats.requests) == (30, 80)
    aliases = open_registry(settings).aliases()
    assert aliases["production"].version == v2 and aliases["previous"].version == v1 and CANARY not in aliases
    assert receiver.subjects()[-1] == f"Fragua: canary {v2} promoted"
    assert [e.alias for e in open_registry(settings).history()][-3:] == ["production", "previous", CANARY]


def test_the_canary_flow_drops_a_canary_that_fails_more_or_is_rated_worse(prefect_api, webhook_settings, tmp_path):
    from fragua.flows.canary import canary_flow
    from fragua.registry.canary import start_canary

    settings, receiver = webhook_settings
    settings = canary_settings(settings)
    v1, v2, v3 = registry_with_versions(settings, tmp_path)
    log = ServingLog(settings)

    start_canary(open_registry(settings), v2, 10, reason="test")
    serve(log, v1, 50, rating=1)
    serve(log, v2, 25, failures=5)
    dropped = canary_flow(settings)
    assert dropped.action == "drop" and "above registry.canary.max_error_rate_increase" in dropped.reasons[0]
    aliases = open_registry(settings).aliases()
    assert aliases["production"].version == v1 and CANARY not in aliases
    assert receiver.subjects()[-1] == f"Fragua: canary {v2} dropped"

    start_canary(open_registry(settings), v3, 10, reason="test")
    serve(log, v3, 25, rating=-1)
    serve(log, v1, 50, rating=1, start=50)  # production's ratings before this canary started do not count
    worse = canary_flow(settings)
    assert worse.action == "drop" and "more than registry.canary.max_rating_drop" in worse.reasons[0]
    assert open_registry(settings).production().version == v1 and CANARY not in open_registry(settings).aliases()


@pytest.mark.e2e
@pytest.mark.slow(seconds=60)
def test_a_validated_run_deployed_as_a_canary_leaves_production(prefect_api, validated_work, tmp_path):
    from fragua.flows.deploy import deploy_flow

    template, run_id = validated_work
    work = tmp_path / "work"
    shutil.copytree(template, work)
    settings = Settings(work_dir=work, **QUICK)
    first = deploy_flow(settings, run_id)
    assert first.promoted and first.production == "fragua-tiny-v1"
    canary = deploy_flow(settings, run_id, canary_percent=15)
    assert (canary.version, canary.published, canary.promoted, canary.production) == ("fragua-tiny-v2", True, False, "fragua-tiny-v1")
    assert (canary.canary, canary.canary_percent) == ("fragua-tiny-v2", 15)
    state = open_registry(settings).alias(CANARY)[0]
    assert (state.version, state.traffic_percent) == ("fragua-tiny-v2", 15)
