"""The Prefect API a command's flow runs report to: the server named by PREFECT_API_URL, or
the temporary one Prefect starts for the run when none is named."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

# Prefect waits 20 s for its temporary server; a loaded 2-core machine can need longer
# (database migrations and the app's import run in a fresh process). Waiting longer costs
# nothing when it starts sooner.
TEMPORARY_SERVER_STARTUP_SECONDS = 180
_PREFECT_TIMEOUT_MESSAGE = "Timed out while attempting to connect to ephemeral Prefect API server"


class PrefectServerError(Exception):
    """The temporary Prefect server did not come up; the message says how to avoid it."""


@contextmanager
def temporary_server_patience() -> Iterator[None]:
    """Run flows with a generous start-up timeout for the temporary server, unless a server
    is configured or the user chose the timeout (environment or Prefect profile); a server
    that still does not come up becomes one PrefectServerError instead of a traceback."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, get_current_settings, temporary_settings

    current = get_current_settings()
    chosen = "startup_timeout_seconds" in current.server.ephemeral.model_fields_set
    updates = {} if current.api.url or chosen else {PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: TEMPORARY_SERVER_STARTUP_SECONDS}
    with temporary_settings(updates=updates):
        timeout = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        try:
            yield
        except RuntimeError as exc:
            if _PREFECT_TIMEOUT_MESSAGE not in str(exc):
                raise
            raise PrefectServerError(
                f"the temporary Prefect server did not start within {timeout} s (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); "
                "start one with `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api, "
                "or raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
            ) from exc
