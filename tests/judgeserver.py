"""A judge behind a real OpenAI-compatible HTTP endpoint on 127.0.0.1, for the judge tests.

It answers the chat-completions protocol with deterministic verdicts: an answer is correct
when it contains a reference (after lower-casing), partially correct when it shares a word
with one, else incorrect; of two answers the one sharing more words with the references wins.
The requested model name picks a behaviour: ``follow`` (the above), ``garbled`` (never JSON),
``garbled-once`` (not JSON the first time a prompt is seen), ``first`` (always prefers answer A,
a judge with position bias).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse

_SECTION = re.compile(
    r"(?:Reference|Referencia|References \(any one is correct\)|Referencias \(cualquiera es correcta\)):\n(?P<refs>.*?)\n\n"
    r"(?:Answer|Respuesta)(?P<rest>.*)$",
    re.DOTALL,
)


def _references(block: str) -> list[str]:
    lines = [line for line in block.splitlines() if line.strip()]
    return [line.removeprefix("- ") for line in lines]


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def verdict_for(references: list[str], answer: str) -> dict[str, Any]:
    if any(ref.lower() in answer.lower() for ref in references):
        return {"verdict": "correct", "missing": []}
    if any(_words(ref) & _words(answer) for ref in references):
        return {"verdict": "partially correct", "missing": [references[0]]}
    return {"verdict": "incorrect", "missing": [references[0]]}


def winner_for(references: list[str], first: str, second: str) -> str:
    wanted = set().union(*(_words(ref) for ref in references))
    a, b = len(wanted & _words(first)), len(wanted & _words(second))
    return "A" if a > b else "B" if b > a else "tie"


class JudgeServer:
    """Start with ``start()``, stop with ``stop()``; ``requests`` holds every request body and its Authorization header."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.seen: set[tuple[str, str]] = set()
        self.lock = threading.Lock()
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self._complete)
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _complete(self, request: Request, authorization: str | None = Header(None)) -> JSONResponse:
        body = await request.json()
        with self.lock:
            self.requests.append({"body": body, "authorization": authorization})
        model, user = body["model"], body["messages"][-1]["content"]
        if model == "needs-key" and authorization != "Bearer sk-judge-test":
            return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
        with self.lock:
            first_time = (model, user) not in self.seen
            self.seen.add((model, user))
        if model == "garbled" or (model == "garbled-once" and first_time):
            content = "I think the answer is quite good overall."
        else:
            match = _SECTION.search(user)
            assert match, user
            references, rest = _references(match.group("refs")), match.group("rest")
            pair = re.match(r" A:\n(?P<a>.*?)\n\n(?:Answer|Respuesta) B:\n(?P<b>.*)$", rest, re.DOTALL)
            if pair:
                winner = "A" if model == "first" else winner_for(references, pair.group("a"), pair.group("b"))
                content = json.dumps({"winner": winner})
            else:
                content = "```json\n" + json.dumps(verdict_for(references, rest.removeprefix(":\n"))) + "\n```"
        return JSONResponse({
            "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        })

    def start(self, timeout: float = 60.0) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the judge server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout=30)
