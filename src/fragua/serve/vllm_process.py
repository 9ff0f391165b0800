"""One vLLM OpenAI server in a child process: its command line, its start and health, the LoRA
adapters loaded into it at run time, and its streamed completions translated into the engine's
pieces (``TextDelta`` … ``Completion``).

vLLM listens on 127.0.0.1 only, on a free port, with a key made for the process, so nothing
but this engine can reach it, its runtime adapter endpoints included.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fragua.serve.engine import (
    Completion,
    EngineError,
    ModelUnavailable,
    Overloaded,
    PromptTooLong,
    SamplingParams,
    TextDelta,
)
from fragua.settings import Settings

logger = logging.getLogger("fragua.serve.vllm")

HEALTH_POLL_S = 0.5
STOP_GRACE_S = 30.0
# vLLM's words when a prompt plus max_tokens exceeds the model's context (a 400 like any bad request).
CONTEXT_MESSAGES = ("maximum context length", "context length", "too long")


@dataclass(frozen=True)
class LaunchSpec:
    """What one vLLM process serves: a base model that adapters load into, or a full fine-tune."""

    model: str  # local folder or hub id of the weights vLLM loads
    served_name: str  # the model name requests for the weights themselves use
    lora: bool  # adapter versions are loaded into it at run time


def vllm_command(executable: str, spec: LaunchSpec, port: int, settings: Settings) -> list[str]:
    """`vllm serve` with the arguments the serve settings imply, then serve.vllm_extra_args."""
    serve = settings.serve
    command = [
        executable, "serve", spec.model,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--served-model-name", spec.served_name,
        "--gpu-memory-utilization", f"{serve.vllm_gpu_memory_utilization / serve.vllm_max_bases:.4g}",
        "--max-num-seqs", str(serve.max_batch_size),
    ]
    if spec.lora:
        loras = str(serve.vllm_max_loras)
        command += ["--enable-lora", "--max-loras", loras, "--max-cpu-loras", loras, "--max-lora-rank", str(serve.vllm_max_lora_rank)]
    if settings.train.trust_remote_code:
        command.append("--trust-remote-code")
    return command + list(serve.vllm_extra_args)


def vllm_environment(api_key: str, spec: LaunchSpec) -> dict[str, str]:
    """The child's environment: the key it requires on /v1 (kept off the command line, which `ps` shows)
    and, for adapter processes, vLLM's switch for its load/unload endpoints."""
    environment = {**os.environ, "VLLM_API_KEY": api_key}
    if spec.lora:
        environment["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    return environment


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def error_message(body: bytes) -> str:
    """The message of a vLLM error body: {"error": {"message"}} (current), {"message"} (older
    releases), FastAPI's {"detail"}, or the text itself."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text or "(no message)"
    if isinstance(data, dict):
        inner = data.get("error")
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        for key in ("message", "detail"):
            if data.get(key):
                return str(data[key]) if not isinstance(data[key], list) else json.dumps(data[key])
    return text


def engine_error(status: int, message: str) -> EngineError:
    """vLLM's HTTP status as the engine error the HTTP layer maps to its own status."""
    if status in (429, 503):
        return Overloaded(f"vLLM is busy ({status}): {message}")
    if status == 404:
        return ModelUnavailable(f"vLLM does not serve it: {message}")
    if status == 400 and any(words in message.lower() for words in CONTEXT_MESSAGES):
        return PromptTooLong(message)
    if 400 <= status < 500:
        return EngineError(message)
    return ModelUnavailable(f"vLLM failed ({status}): {message}")


def completion_request(model: str, prompt: str, params: SamplingParams, *, add_special_tokens: bool, stop_token_ids: list[int]) -> dict[str, Any]:
    """A streamed /v1/completions body whose last chunk carries the token counts."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stop": list(params.stop),
        "stream": True,
        "stream_options": {"include_usage": True},
        # vLLM's own sampling fields: a chat prompt already holds its template's special tokens,
        # and the version's end-of-turn tokens end the answer as in the local engine.
        "add_special_tokens": add_special_tokens,
        "stop_token_ids": stop_token_ids,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    return body


async def _events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON payloads of a server-sent event stream, up to ``data: [DONE]``."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


async def translate_stream(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[TextDelta | Completion]:
    """Completion chunks as text pieces, then one Completion with the usage of the final chunk."""
    pieces: list[str] = []
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    async for event in events:
        if "error" in event or event.get("object") == "error":
            raise ModelUnavailable(f"vLLM stopped the answer: {error_message(json.dumps(event).encode())}")
        for choice in event.get("choices") or []:
            text = choice.get("text") or ""
            if text:
                pieces.append(text)
                yield TextDelta(text)
            finish_reason = choice.get("finish_reason") or finish_reason
        usage = event.get("usage") or usage
    if finish_reason is None or usage is None:
        raise ModelUnavailable("vLLM ended the stream before the answer's finish reason and token counts")
    if finish_reason not in ("stop", "length"):
        raise ModelUnavailable(f"vLLM ended the answer with finish reason {finish_reason!r}")
    yield Completion(text="".join(pieces), finish_reason=finish_reason, prompt_tokens=int(usage["prompt_tokens"]), completion_tokens=int(usage["completion_tokens"]))


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


class VllmProcess:
    """A running `vllm serve`: started by ``launch``, ended by ``stop`` (its whole process group)."""

    def __init__(self, spec: LaunchSpec, process: subprocess.Popen[bytes], port: int, api_key: str, log_path: Path) -> None:
        self.spec = spec
        self.process = process
        self.port = port
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        # Streams stay open as long as answers take; connecting and the adapter calls are bounded.
        self.client = httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=httpx.Timeout(None, connect=10.0),
        )
        self.adapters: OrderedDict[str, Path] = OrderedDict()  # loaded adapter versions, least recently used first

    @classmethod
    async def launch(cls, spec: LaunchSpec, executable: str, settings: Settings, log_dir: Path) -> VllmProcess:
        """Start vLLM and wait until /health answers; ModelUnavailable naming the log on failure."""
        port = free_port()
        api_key = secrets.token_urlsafe(32)
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"vllm-{port}.log"
        command = vllm_command(executable, spec, port, settings)
        logger.info("starting vLLM for %s on 127.0.0.1:%d (log: %s)", spec.model, port, log_path)
        with log_path.open("ab") as log:
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            try:
                process = await asyncio.to_thread(
                    subprocess.Popen, command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=vllm_environment(api_key, spec), start_new_session=True,  # its own group: stop() ends its workers too
                )
            except OSError as exc:
                raise ModelUnavailable(f"cannot run {executable} (serve.vllm_executable): {exc}") from exc
        server = cls(spec, process, port, api_key, log_path)
        try:
            await server._wait_healthy(settings.serve.vllm_startup_timeout_s)
        except BaseException:
            await server.stop()
            raise
        return server

    async def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                raise ModelUnavailable(
                    f"vLLM exited with code {code} while loading {self.spec.model}: {_last_line(self.log_path)} (full log: {self.log_path})"
                )
            try:
                if (await self.client.get("/health", timeout=5.0)).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet: vLLM opens its port once the model is loaded
            if time.monotonic() > deadline:
                raise ModelUnavailable(
                    f"vLLM did not answer /health within {timeout_s:g}s while loading {self.spec.model} (log: {self.log_path}); "
                    "raise serve.vllm_startup_timeout_s for a large model"
                )
            await asyncio.sleep(HEALTH_POLL_S)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return await self.client.post(path, json=body, timeout=httpx.Timeout(600.0, connect=10.0))
        except httpx.TransportError as exc:
            raise ModelUnavailable(f"vLLM at {self.url} is unreachable ({exc.__class__.__name__}); its log: {self.log_path}") from exc

    async def load_adapter(self, name: str, folder: Path) -> None:
        """Load an adapter folder under ``name`` (vLLM reads it from disk)."""
        response = await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(folder)})
        message = error_message(response.content)
        # A name vLLM already holds (loaded before a lost reply) is what was asked for.
        if response.status_code != 200 and not (response.status_code == 400 and "already been loaded" in message):
            raise ModelUnavailable(f"vLLM could not load adapter {name} from {folder} ({response.status_code}): {message}")
        self.adapters[name] = folder
        logger.info("vLLM at %s loaded adapter %s", self.url, name)

    async def unload_adapter(self, name: str) -> None:
        self.adapters.pop(name, None)
        response = await self._post("/v1/unload_lora_adapter", {"lora_name": name})
        if response.status_code not in (200, 404):  # 404: vLLM no longer holds it, which is the goal
            raise ModelUnavailable(f"vLLM could not unload adapter {name} ({response.status_code}): {error_message(response.content)}")
        logger.info("vLLM at %s unloaded adapter %s", self.url, name)

    async def complete(self, body: dict[str, Any]) -> AsyncIterator[TextDelta | Completion]:
        """Stream a /v1/completions request; errors before the first piece are the engine's."""
        try:
            async with self.client.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    raise engine_error(response.status_code, error_message(await response.aread()))
                async for piece in translate_stream(_events(response)):
                    yield piece
        except httpx.TransportError as exc:
            raise ModelUnavailable(f"lost vLLM at {self.url} ({exc.__class__.__name__}); its log: {self.log_path}") from exc

    async def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after a grace period, then to what is left of the
        group (vLLM's engine workers); the client closed."""
        await self.client.aclose()
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return  # the whole group is gone already
        try:
            await asyncio.to_thread(self.process.wait, STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await asyncio.to_thread(self.process.wait)
        logger.info("stopped vLLM for %s (log: %s)", self.spec.model, self.log_path)
