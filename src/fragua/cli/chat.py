"""`fragua chat`: talk to a version, an alias or a local model folder in the terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from fragua.cli.common import ALIAS_OPTION, PATH_OPTION, VERSION_OPTION, choose_model, console, load_settings, raise_user, run_step


def chat(
    ctx: typer.Context,
    version: Optional[str] = VERSION_OPTION,
    alias: Optional[str] = ALIAS_OPTION,
    path: Optional[Path] = PATH_OPTION,
    sample: Optional[bool] = typer.Option(None, "--sample/--greedy", help="Sample replies, or decode greedily (chat.do_sample)."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature (chat.temperature)."),
    top_k: Optional[int] = typer.Option(None, help="Sample among the k most likely tokens; 0 disables (chat.top_k)."),
    top_p: Optional[float] = typer.Option(None, help="Nucleus sampling threshold (chat.top_p)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Longest reply in tokens (chat.max_new_tokens)."),
    repetition_penalty: Optional[float] = typer.Option(None, help="Above 1 discourages repetition (chat.repetition_penalty)."),
    system: Optional[str] = typer.Option(None, help="System prompt for every conversation (chat.system_prompt)."),
    seed: Optional[int] = typer.Option(None, help="Seed for reproducible sampling (chat.seed)."),
    save_dir: Path = typer.Option(Path("."), help="Where /save writes conversations without a file name."),
) -> None:
    """Talk to a version (default: production), an alias or a local model folder."""
    from fragua.inference.chat import Responder, chat_loop
    from fragua.inference.choice import load_model

    given = {"do_sample": sample, "temperature": temperature, "top_k": top_k, "top_p": top_p, "max_new_tokens": max_new_tokens,
             "repetition_penalty": repetition_penalty, "system_prompt": system, "seed": seed}
    # Appended as --set overrides so they are validated, and named, like every other setting.
    ctx.obj["overrides"] = [*ctx.obj["overrides"], *(f"chat.{key}={json.dumps(value)}" for key, value in given.items() if value is not None)]
    settings = load_settings(ctx)
    choice = choose_model(settings, version, alias, path)
    with console.status(f"loading {choice.label}"):
        loaded = run_step(lambda: load_model(settings, choice))
    try:
        responder = Responder(loaded.model, loaded.tokenizer, settings.chat)
    except ValueError as exc:
        raise_user(str(exc))
    chat_loop(
        responder, input_stream=sys.stdin, console=console, model_label=choice.label, save_dir=save_dir,
        header={"version": choice.version, "folder": choice.folder, "device": str(loaded.model.device)},
    )
