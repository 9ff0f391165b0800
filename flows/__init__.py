"""Prefect flows: compose tasks and publish artifacts; no business logic lives here."""

import logging
from typing import Any

from prefect.exceptions import ParameterTypeError
from prefect.runtime import flow_run


class _ParameterErrorsInOneLine(logging.Filter):
    """A run with invalid parameters fails with the engine's one line ("Validation of flow parameters failed with
    error: ..."). Prefect also logs the failure with every value it was given (a secret among them, when a run bypassed
    the parameter schema) and again with a traceback: both are dropped, from the console and the UI's logs alike."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ParameterTypeError):
            return False
        return not record.getMessage().startswith("Parameter validation failed for flow")


for _logger in ("prefect.flows", "prefect.flow_runs"):
    logging.getLogger(_logger).addFilter(_ParameterErrorsInOneLine())


def current_actor() -> str | None:
    """Who moves an alias, as recorded in the registry's event log."""
    return f"prefect-flow-run:{flow_run.id}" if flow_run.id else None


def notify_failure(flow: Any, run: Any, state: Any) -> None:
    """on_failure hook: tell notifications.block that a top-level run failed (subflows fail their parent, which reports)."""
    from fragua.integrations.notify import send
    from fragua.settings import settings_from_overrides

    if run.parent_task_run_id is not None:
        return
    given = (run.parameters or {}).get("settings")
    try:
        # The run's own notifications (all of them from the CLI, only the overridden ones from a deployment run) over the environment and profile.
        settings = settings_from_overrides({"notifications": given.get("notifications") if isinstance(given, dict) else None}).notifications
        send(settings, "failure", f"Fragua: {flow.name} run {run.name} failed", f"Flow run {run.name} ({run.id}) of {flow.name} failed: {state.message}")
    except Exception as exc:  # a hook must not mask the run's own failure
        logging.getLogger("fragua.notify").warning("could not send the failure notification: %s", exc)
