"""`fragua server start|stop|status`: a Prefect server that outlives the command, which every
later command uses instead of starting a temporary one (see ``integrations.prefect_server``)."""

from __future__ import annotations

import typer

from fragua.cli.common import console, run_step
from fragua.cli.render import kv_table
from fragua.integrations.prefect_server import DEFAULT_PORT, TEMPORARY_SERVER_STARTUP_SECONDS, LocalServer

server_app = typer.Typer(help="A Prefect server for your commands: started once, used by every command until stopped.", no_args_is_help=True)


def _describe(title: str, server: LocalServer) -> None:
    console.print(kv_table(title, [
        ("PREFECT_API_URL", server.api_url), ("UI", server.ui_url), ("pid", server.pid), ("log", server.log),
    ]))


@server_app.command("start")
def start(
    port: int = typer.Option(DEFAULT_PORT, min=0, max=65535, help="Port on 127.0.0.1 (0 picks a free one)."),
    ui: bool = typer.Option(True, "--ui/--no-ui", help="Serve the Prefect UI too."),
    timeout: float = typer.Option(TEMPORARY_SERVER_STARTUP_SECONDS, min=1, help="Seconds to wait for it to answer."),
) -> None:
    """Start a Prefect server on 127.0.0.1 in the background; commands use it while PREFECT_API_URL is unset."""
    from fragua.integrations.prefect_server import start_server

    server, started = run_step(lambda: start_server(port, ui=ui, timeout=timeout))
    _describe("Prefect server started" if started else "Prefect server already running", server)
    console.print("Fragua commands use it while PREFECT_API_URL is unset; other Prefect tools need "
                  f"`export PREFECT_API_URL={server.api_url}`. Stop it with `fragua server stop`.", highlight=False)


@server_app.command("stop")
def stop() -> None:
    """Stop the Prefect server `fragua server start` started."""
    from fragua.integrations.prefect_server import stop_server

    server = stop_server()
    console.print(f"stopped the Prefect server at {server.api_url} (pid {server.pid})" if server else "no Prefect server started by Fragua is running",
                  highlight=False)


@server_app.command("status")
def status() -> None:
    """Whether the Prefect server `fragua server start` started runs and answers."""
    from fragua.integrations.prefect_server import answers, recorded_server

    server = recorded_server()
    if server is None:
        console.print("no Prefect server started by Fragua is running; commands start a temporary one unless PREFECT_API_URL is set",
                      highlight=False)
        raise typer.Exit(1)
    healthy = answers(server.api_url)
    _describe("Prefect server (answering)" if healthy else "Prefect server (running, not answering)", server)
    if not healthy:
        raise typer.Exit(1)
