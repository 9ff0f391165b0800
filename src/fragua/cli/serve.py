"""`fragua serve`: the OpenAI-compatible server over the registry's versions."""

from __future__ import annotations

from typing import Any, Optional

import typer

from fragua.cli.common import console, exit_on_sigterm, load_settings, raise_user, run_flow
from fragua.settings import Settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def open_engine(settings: Settings, registry: Any) -> Any:
    """The engine serve.engine names: 'local' batches in this process, 'vllm' drives a vLLM server."""
    if settings.serve.engine == "vllm":
        from fragua.serve.vllm import VllmEngine

        return VllmEngine(settings, registry)
    from fragua.serve.batching import LocalEngine

    return LocalEngine(settings, registry)


def serve(
    ctx: typer.Context,
    host: Optional[str] = typer.Option(None, help="Bind address (default serve.host, 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default serve.port, 8000; 0 picks a free one)."),
) -> None:
    """Serve the registry's versions with the OpenAI API (chat and text completions, streaming);
    `model` is an alias such as production, or a version. Deploys and rollbacks take effect without a restart."""
    import uvicorn

    from fragua.intake.queue import QueueUnavailable
    from fragua.intake.serving_log import ServingLog
    from fragua.registry import open_registry
    from fragua.serve.app import create_app
    from fragua.serve.auth import ServeError, api_key
    from fragua.serve.engine import EngineError

    settings = load_settings(ctx)
    try:
        token = run_flow(lambda: api_key(settings.serve)) if settings.serve.api_key_block else api_key(settings.serve)
    except ServeError as exc:
        raise_user(str(exc))
    bind = host or settings.serve.host
    if token is None and bind not in LOOPBACK:
        console.print(f"[yellow]warning:[/yellow] serving on {bind} without an API key: anyone who can reach it may use it (set serve.api_key)", highlight=False)
    registry = open_registry(settings)
    try:
        engine = open_engine(settings, registry)
    except EngineError as exc:  # e.g. serve.engine = "vllm" without CUDA or vLLM installed
        raise_user(str(exc))
    try:
        serving_log = ServingLog(settings, log_requests=settings.serve.log_requests)
    except QueueUnavailable as exc:
        raise_user(str(exc))
    app_ = create_app(settings, engine, registry, token=token, serving_log=serving_log)
    with exit_on_sigterm():
        uvicorn.run(
            app_, host=bind, port=settings.serve.port if port is None else port, log_level="info",
            timeout_graceful_shutdown=settings.serve.shutdown_grace_s,
        )
