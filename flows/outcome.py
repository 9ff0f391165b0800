"""How a top-level run states its outcome in the Prefect UI: its name, its tags, a final state
named after the verdict, a summary artifact and a last log line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from prefect import get_client, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, State

from fragua.integrations.notify import Event
from fragua.reports.outcome import Verdict
from fragua.settings import Settings, settings_from_overrides
from fragua.tasks.notify import notify_task

R = TypeVar("R")
_NAME_LENGTH = 80


def label_run(name: str | None = None, tags: Iterable[str] = ()) -> None:
    """Rename the current flow run and/or add tags to it (the ones it has are kept)."""
    if flow_run.id is None:
        return
    with get_client(sync_client=True) as client:
        merged = None
        if tags:
            merged = sorted({*client.read_flow_run(flow_run.id).tags, *tags})
        client.update_flow_run(flow_run.id, name=name, tags=merged)


def model_tags(settings: Settings, version: str | None = None) -> list[str]:
    return [f"model:{settings.registry.model_name}", *([f"version:{version}"] if version else [])]


def end(verdict: Verdict, result: R) -> State[R]:
    """The run's final state: Completed, named after the verdict, carrying ``result`` (which is
    what calling the flow returns), after a last log line saying the same."""
    get_run_logger().info("%s: %s", verdict.name, verdict.line)
    return Completed(name=verdict.name, message=verdict.line, data=result)


def finish(verdict: Verdict, result: R, summary: str, key: str, description: str) -> State[R]:
    """``end``, after the summary artifact a user opens first."""
    create_markdown_artifact(summary, key=key, description=description)
    return end(verdict, result)


def notify(settings: Settings, event: Event, subject: str, body: str) -> None:
    """A notification that cannot be sent is logged; it never undoes the move it reports."""
    state = notify_task(settings.notifications, event, subject, body, return_state=True)
    if state.is_failed():
        get_run_logger().warning("could not send the %s notification: %s", event, state.message)


def named_after(flow_name: str, *parameters: str, otherwise: str | None = None) -> Callable[[], str]:
    """A ``flow_run_name``: ``<flow>-<value>`` of the first of ``parameters`` the run was given,
    else ``otherwise``, else ``<flow>-<source names>``; so the UI's run list says what each run is."""

    def name() -> str:
        given = flow_run.parameters or {}
        for parameter in parameters:
            if given.get(parameter):
                return f"{flow_name}-{given[parameter]}"[:_NAME_LENGTH]
        return otherwise or sources_run_name(flow_name)

    return name


def sources_run_name(flow_name: str) -> str:
    """``<flow>-<source names>`` from the run's settings parameter, e.g. ``pipeline-batch1+batch2``."""
    try:
        names = "+".join(_source_name(spec.path) for spec in _run_settings().data.sources)
    except (ValueError, OSError):  # bad settings: the flow's body reports them in one line, the name must not fail first
        return flow_name
    return f"{flow_name}-{names}"[:_NAME_LENGTH] if names else flow_name


def _source_name(path: str) -> str:
    return path.rstrip("/").split(":", 1)[-1] if path.startswith("hf:") else Path(path.rstrip("/")).stem


def _run_settings() -> Settings:
    given: Any = (flow_run.parameters or {}).get("settings")
    if isinstance(given, Settings):
        return given
    return settings_from_overrides(given) if isinstance(given, dict) else Settings.load()
