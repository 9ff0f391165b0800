"""Prefect flows: compose tasks and publish artifacts; no business logic lives here."""

import logging
from typing import Any

from prefect.runtime import flow_run


def current_actor() -> str | None:
    """Who moves an alias, as recorded in the registry's event log."""
    return f"prefect-flow-run:{flow_run.id}" if flow_run.id else None


def notify_failure(flow: Any, run: Any, state: Any) -> None:
    """on_failure hook: tell notifications.block that a top-level run failed (subflows fail their parent, which reports)."""
    from fragua.integrations.notify import send
    from fragua.settings import NotificationSettings, Settings

    if run.parent_task_run_id is not None:
        return
    given = (run.parameters or {}).get("settings")
    try:
        settings = NotificationSettings(**given["notifications"]) if isinstance(given, dict) and "notifications" in given else Settings.load().notifications
        send(settings, "failure", f"Fragua: {flow.name} run {run.name} failed", f"Flow run {run.name} ({run.id}) of {flow.name} failed: {state.message}")
    except Exception as exc:  # a hook must not mask the run's own failure
        logging.getLogger("fragua.notify").warning("could not send the failure notification: %s", exc)
