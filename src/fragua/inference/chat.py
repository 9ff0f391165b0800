"""Interactive chat with a model in the terminal.

``chat_loop`` reads lines from any text stream and writes to a rich Console, so the same
loop serves a person at a terminal and a test feeding it a script. Replies stream token by
token; the prompt is rendered with the chat template saved with the model.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, TextIO

from rich.console import Console
from rich.table import Table

from fragua.data.records import Message
from fragua.models.templates import generation_prompt, stop_token_ids
from fragua.settings import ChatSettings

COMMANDS = {
    "/new": "start a new conversation (the model forgets this one)",
    "/save [FILE]": "save the conversation to a JSON file",
    "/settings": "show the generation settings",
    "/help": "show these commands",
    "/exit": "leave (also /quit or Ctrl-D)",
}
DEFAULT_CONTEXT = 2048


class _StopFlag:
    """A StoppingCriteria that ends generation once its event is set (Ctrl-C during a reply)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def context_length(model: Any) -> int:
    """Longest sequence the model accepts, from its config."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_CONTEXT


class Responder:
    """Generates replies to a conversation with one loaded model and fixed generation settings."""

    def __init__(self, model: Any, tokenizer: Any, settings: ChatSettings) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.context = context_length(model)
        if settings.max_new_tokens >= self.context:
            raise ValueError(
                f"chat.max_new_tokens ({settings.max_new_tokens}) leaves no room for the conversation in the "
                f"model's context of {self.context} tokens; lower it"
            )
        if settings.seed is not None:
            from transformers import set_seed

            set_seed(settings.seed)

    def _tokens(self, messages: list[Message]) -> list[int]:
        return self.tokenizer(generation_prompt(self.tokenizer, messages), add_special_tokens=False)["input_ids"]

    def fit(self, messages: list[Message]) -> tuple[list[int], int]:
        """Prompt tokens that fit the context with room for the reply, and how many earlier
        turns had to be left out (the system message and the newest turn are always kept)."""
        budget = self.context - self.settings.max_new_tokens
        system = [m for m in messages[:1] if m.role == "system"]
        turns = messages[len(system):]
        dropped = 0
        tokens = self._tokens(messages)
        while len(tokens) > budget and len(turns) > 1:
            turns = turns[1:]
            dropped += 1
            tokens = self._tokens(system + turns)
        return tokens[-budget:], dropped

    def generation_kwargs(self) -> dict[str, Any]:
        settings = self.settings
        kwargs: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": settings.do_sample,
            "repetition_penalty": settings.repetition_penalty,
            "eos_token_id": stop_token_ids(self.tokenizer),
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if settings.do_sample:
            kwargs.update(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p)
        return kwargs

    def stream(self, prompt_tokens: list[int]) -> Iterator[str]:
        """The reply's text, piece by piece, while the model generates in a worker thread.
        Leaving the iteration early (Ctrl-C) stops the generation at the next token."""
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = _StopFlag()
        input_ids = torch.tensor([prompt_tokens], device=self.model.device)
        failure: list[BaseException] = []

        def generate() -> None:
            try:
                with torch.no_grad():
                    self.model.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([stop]),
                        **self.generation_kwargs(),
                    )
            except BaseException as exc:  # re-raised in the caller's thread below
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=generate, name="fragua-chat-generate", daemon=True)
        worker.start()
        try:
            yield from streamer
        finally:
            stop.event.set()
            worker.join()
        if failure:
            raise failure[0]


@dataclass
class Conversation:
    system_prompt: str | None
    messages: list[Message] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.messages = [Message(role="system", content=self.system_prompt)] if self.system_prompt else []
        self.started_at = datetime.now(timezone.utc).isoformat()

    @property
    def turns(self) -> int:
        return sum(1 for m in self.messages if m.role == "user")


def save_conversation(conversation: Conversation, path: Path, header: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        **header,
        "started_at": conversation.started_at,
        "saved_at": datetime.now(timezone.utc).isoformat(),
        "messages": [m.model_dump() for m in conversation.messages],
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _read(console: Console, stream: TextIO, prompt: str) -> str | None:
    """The next line, or None at end of input. A terminal gets line editing through input()."""
    if stream.isatty():
        try:
            return console.input(prompt)
        except EOFError:
            return None
    console.print(prompt, end="")
    line = stream.readline()
    if not line:
        return None
    console.print(line.rstrip("\n"), markup=False, highlight=False)
    return line.rstrip("\r\n")


def _help_table() -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2))
    for command, meaning in COMMANDS.items():
        table.add_row(f"[bold]{command}[/bold]", meaning)
    return table


def chat_loop(
    responder: Responder,
    *,
    input_stream: TextIO,
    console: Console,
    model_label: str,
    save_dir: Path,
    header: dict[str, Any] | None = None,
) -> list[Path]:
    """Talk until /exit or end of input; returns the files conversations were saved to."""
    settings = responder.settings
    conversation = Conversation(settings.system_prompt)
    saved: list[Path] = []
    transcript_header = {"model": model_label, **(header or {}), "settings": settings.model_dump(mode="json")}
    console.print(f"[bold]Chatting with {model_label}[/bold] — type a message, or /help for commands.", highlight=False)
    while True:
        line = _read(console, input_stream, "[bold green]you ›[/bold green] ")
        if line is None:
            console.print()
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, argument = text.partition(" ")
            command = command.lower()
            if command in ("/exit", "/quit"):
                break
            if command == "/new":
                conversation.reset()
                console.print("[dim]new conversation[/dim]")
            elif command == "/save":
                if not conversation.turns:
                    console.print("[yellow]nothing to save yet: the conversation is empty[/yellow]")
                    continue
                stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
                name = f"chat-{model_label.split()[0].replace('/', '_')}-{stamp}.json"
                target = Path(argument.strip()).expanduser() if argument.strip() else save_dir / name
                try:
                    saved.append(save_conversation(conversation, target, transcript_header))
                except OSError as exc:
                    console.print(f"[red]could not save to {target}: {exc.strerror or exc}[/red]", highlight=False)
                    continue
                console.print(f"saved {conversation.turns} turn(s) to {target}", highlight=False)
            elif command == "/settings":
                console.print_json(json.dumps(settings.model_dump(mode="json")))
            elif command == "/help":
                console.print(_help_table())
            else:
                console.print(f"[yellow]unknown command {command}[/yellow]; commands:", highlight=False)
                console.print(_help_table())
            continue
        conversation.messages.append(Message(role="user", content=text))
        prompt, dropped = responder.fit(conversation.messages)
        if dropped:
            console.print(f"[dim]({dropped} earlier message(s) no longer fit the model's context and were left out)[/dim]")
        console.print("[bold cyan]model ›[/bold cyan] ", end="")
        pieces: list[str] = []
        try:
            for piece in responder.stream(prompt):
                if not pieces:
                    piece = piece.lstrip()  # the reply as stored, which is stripped
                    if not piece:
                        continue
                pieces.append(piece)
                console.print(piece, end="", markup=False, highlight=False)
        except KeyboardInterrupt:
            console.print(" [dim](interrupted)[/dim]")
        reply = "".join(pieces).strip()
        if reply:
            console.print()
        else:
            console.print("[dim](empty reply)[/dim]")
        conversation.messages.append(Message(role="assistant", content=reply))
    console.print("bye", highlight=False)
    return saved
