"""Serving jobs: after an alias moves, the server at serve.server_url loads the version and answers with it."""

from __future__ import annotations

import logging

from fragua.serve.auth import api_key
from fragua.serve.client import ServeClient, ServerCheckFailed
from fragua.settings import Settings

logger = logging.getLogger("fragua.jobs")


def check_server(settings: Settings, alias: str, version: str) -> str | None:
    """The server's answer by ``version`` once ``alias`` routes to it there; None when no
    serve.server_url is set. Raises ServerCheckFailed."""
    if settings.serve.server_url is None:
        return None
    with ServeClient(settings.serve.server_url, api_key(settings.serve), settings.serve.check_timeout_s) as client:
        return client.check(alias, version)


def tell_server_to_reload(settings: Settings) -> None:
    """Best effort, after an alias was put back: the server follows the registry within
    serve.watch_interval_s anyway, this only makes it immediate."""
    if settings.serve.server_url is None:
        return
    try:
        with ServeClient(settings.serve.server_url, api_key(settings.serve), settings.serve.check_timeout_s) as client:
            client.reload()
    except ServerCheckFailed as exc:
        logger.warning("%s; it will follow the registry within serve.watch_interval_s", exc)
