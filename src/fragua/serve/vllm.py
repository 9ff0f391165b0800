"""The vLLM engine (serve.engine = "vllm", CUDA only): registry versions served by vLLM's OpenAI
server, with adapter versions loaded into it and unloaded at run time as aliases move.

One vLLM process per base model: adapter versions trained from the same base share it (loaded
with /v1/load_lora_adapter under their version names, at most serve.vllm_max_loras at once, the
least recently used idle one unloaded beyond that). A full fine-tune has no base to share, so it
is its own process, served under its version name. Processes are kept like adapters: at most
serve.vllm_max_bases, the least recently used idle one stopped beyond that.

Prompts are rendered with the chat template saved with each version (as the local engine does)
and sent to /v1/completions, so a version answers with the template it was trained with even
when the base model's own template differs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fragua.models.identity import locate_base
from fragua.models.loading import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    ModelLoadError,
    is_adapter,
    load_tokenizer,
)
from fragua.models.templates import generation_prompt, stop_token_ids
from fragua.registry.versions import Registry, RegistryError
from fragua.serve.engine import (
    Completion,
    EngineError,
    EngineStats,
    ModelUnavailable,
    Overloaded,
    Prompt,
    PromptTooLong,
    SamplingParams,
    TextDelta,
)
from fragua.serve.vllm_process import LaunchSpec, VllmProcess, completion_request
from fragua.settings import ServeSettings, Settings

logger = logging.getLogger("fragua.serve.vllm")

BASE_SERVED_NAME = "fragua-base"  # what vLLM calls a base model; requests always name a version


class VllmUnavailable(EngineError):
    """vLLM cannot run on this machine (no CUDA, not installed); the message says what to do."""


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def find_vllm(serve: ServeSettings) -> str | None:
    """serve.vllm_executable, else the `vllm` command beside this Python, else on PATH."""
    if serve.vllm_executable:
        path = Path(serve.vllm_executable).expanduser()
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    beside = Path(sys.executable).with_name("vllm")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("vllm")


def vllm_refusal(serve: ServeSettings, *, executable: str | None, cuda: bool) -> str | None:
    """Why the vLLM engine cannot run here, in one line with what to do; None when it can."""
    if not cuda:
        return (
            "serve.engine = 'vllm' needs an NVIDIA GPU with CUDA, and torch sees none on this machine; "
            "use serve.engine = 'local' here (FRAGUA_SERVE__ENGINE=local)"
        )
    if executable is None and serve.vllm_executable:
        return f"serve.vllm_executable = {serve.vllm_executable!r} is not an executable file; give the path of the `vllm` command"
    if executable is None:
        return (
            "serve.engine = 'vllm' needs vLLM, which is not installed: pip install 'fragua[vllm]' "
            "(or set serve.vllm_executable to a vllm command installed elsewhere, or serve.engine = 'local')"
        )
    return None


@dataclass(frozen=True)
class _Prepared:
    """A version fetched and inspected, ready to be served by the process of ``spec``."""

    spec: LaunchSpec
    folder: Path
    tokenizer: Any
    adapter: bool


@dataclass(frozen=True)
class _Loaded:
    process_key: str
    model_name: str  # what requests to vLLM name: the adapter, or the full fine-tune's served name
    tokenizer: Any


class VllmEngine:
    """The Engine protocol over vLLM processes this engine starts and stops."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        executable = find_vllm(settings.serve)
        reason = vllm_refusal(settings.serve, executable=executable, cuda=cuda_available())
        if reason is not None:
            raise VllmUnavailable(reason)
        assert executable is not None  # vllm_refusal said why otherwise
        self.settings = settings
        self.registry = registry
        self.executable = executable
        self.log_dir = settings.work_path / "serve" / "vllm"
        self._processes: OrderedDict[str, VllmProcess] = OrderedDict()  # by the weights they load, least recently used first
        self._versions: OrderedDict[str, _Loaded] = OrderedDict()  # least recently used first
        self._in_flight: Counter[str] = Counter()
        self._load_lock = asyncio.Lock()

    # Loading ------------------------------------------------------------------------------

    def _ready(self, version: str) -> bool:
        loaded = self._versions.get(version)
        if loaded is None or not self._processes[loaded.process_key].alive:
            return False
        self._versions.move_to_end(version)
        return True

    async def load(self, version: str) -> None:
        if self._ready(version):
            return
        async with self._load_lock:
            if self._ready(version):
                return
            prepared = await asyncio.to_thread(self._prepare, version)
            process = await self._process_for(prepared.spec)
            if prepared.adapter:
                await self._make_room(process)
                await process.load_adapter(version, prepared.folder)
                model_name = version
            else:
                model_name = prepared.spec.served_name
            self._versions[version] = _Loaded(prepared.spec.model, model_name, prepared.tokenizer)
            logger.info("serving %s with vLLM (%s)", version, "adapter on " + prepared.spec.model if prepared.adapter else "full model")

    def _prepare(self, version: str) -> _Prepared:
        """A verified local copy of the version, what serves it, and its tokenizer (blocking I/O)."""
        try:
            manifest = self.registry.manifest(version)
            folder = self.registry.fetch(version)
        except RegistryError as exc:
            raise ModelUnavailable(str(exc)) from exc
        try:
            tokenizer = load_tokenizer(str(folder), trust_remote_code=self.settings.train.trust_remote_code)
            if not is_adapter(folder):
                return _Prepared(LaunchSpec(model=str(folder), served_name=version, lora=False), folder, tokenizer, adapter=False)
            config = json.loads((folder / ADAPTER_CONFIG).read_text())
            base = locate_base(manifest.lineage, self.settings.base_model_ref) or config.get("base_model_name_or_path")
        except (ModelLoadError, OSError, ValueError) as exc:
            raise ModelUnavailable(f"{version}: {exc}") from exc
        if not base:
            raise ModelUnavailable(f"{version}: neither its lineage nor its {ADAPTER_CONFIG} names the base model it adapts")
        if not (folder / ADAPTER_WEIGHTS).is_file():
            raise ModelUnavailable(f"{version}: no {ADAPTER_WEIGHTS}; Fragua serves safetensors weights only")
        rank = int(config.get("r", 0))
        if rank > self.settings.serve.vllm_max_lora_rank:
            raise ModelUnavailable(
                f"{version} is an adapter of rank {rank}, above serve.vllm_max_lora_rank ({self.settings.serve.vllm_max_lora_rank}); "
                "raise serve.vllm_max_lora_rank"
            )
        return _Prepared(LaunchSpec(model=base, served_name=BASE_SERVED_NAME, lora=True), folder, tokenizer, adapter=True)

    def _idle(self, version: str) -> bool:
        return self._in_flight[version] == 0

    async def _process_for(self, spec: LaunchSpec) -> VllmProcess:
        """The running process for these weights, or a new one once room is made for it."""
        process = self._processes.get(spec.model)
        if process is not None and process.alive:
            self._processes.move_to_end(spec.model)
            return process
        if process is not None:  # it died: forget it and what it served, then start it again
            logger.warning("vLLM for %s exited (log: %s); starting it again", spec.model, process.log_path)
            await self._retire(spec.model)
        while len(self._processes) >= self.settings.serve.vllm_max_bases:
            idle = next((key for key in self._processes if all(self._idle(v) for v in self._served_by(key))), None)
            if idle is None:
                raise Overloaded(
                    f"all {len(self._processes)} vLLM processes (serve.vllm_max_bases) are answering requests for other base "
                    "models; retry shortly, or raise serve.vllm_max_bases if the GPU has room"
                )
            await self._retire(idle)
        process = await VllmProcess.launch(spec, self.executable, self.settings, self.log_dir)
        self._processes[spec.model] = process
        return process

    def _served_by(self, key: str) -> list[str]:
        return [version for version, loaded in self._versions.items() if loaded.process_key == key]

    async def _retire(self, key: str) -> None:
        for version in self._served_by(key):
            del self._versions[version]
        await self._processes.pop(key).stop()

    async def _make_room(self, process: VllmProcess) -> None:
        """Unload the least recently used idle adapters of ``process`` beyond serve.vllm_max_loras."""
        limit = self.settings.serve.vllm_max_loras
        while len(process.adapters) >= limit:
            oldest = next((v for v in self._versions if v in process.adapters and self._idle(v)), None)
            if oldest is None:
                raise Overloaded(
                    f"all {limit} adapter slots (serve.vllm_max_loras) of vLLM for {process.spec.model} are answering requests; "
                    "retry shortly, or raise serve.vllm_max_loras"
                )
            del self._versions[oldest]
            await process.unload_adapter(oldest)

    # Generating ---------------------------------------------------------------------------

    def _render(self, loaded: _Loaded, prompt: Prompt) -> tuple[str, bool]:
        """The text vLLM continues and whether the tokenizer's special tokens (BOS) are to be added to it."""
        if prompt.messages is not None:
            return generation_prompt(loaded.tokenizer, prompt.messages), False
        assert prompt.text is not None
        return prompt.text, True

    async def generate(self, version: str, prompt: Prompt, params: SamplingParams) -> AsyncIterator[TextDelta | Completion]:
        serve = self.settings.serve
        await self.load(version)
        loaded = self._versions[version]
        process = self._processes[loaded.process_key]
        text, add_special_tokens = self._render(loaded, prompt)
        tokens = len(loaded.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
        if tokens > serve.max_prompt_tokens:
            raise PromptTooLong(f"the prompt is {tokens} tokens, above serve.max_prompt_tokens ({serve.max_prompt_tokens})")
        if sum(self._in_flight.values()) >= serve.max_batch_size + serve.max_queued:
            raise Overloaded(f"{serve.max_batch_size + serve.max_queued} requests are in flight (serve.max_batch_size + serve.max_queued); retry shortly")
        body = completion_request(
            loaded.model_name, text, params, add_special_tokens=add_special_tokens, stop_token_ids=stop_token_ids(loaded.tokenizer)
        )
        self._in_flight[version] += 1
        try:
            async for piece in process.complete(body):
                yield piece
        finally:
            self._in_flight[version] -= 1

    def stats(self) -> EngineStats:
        # vLLM decodes up to serve.max_batch_size requests together (--max-num-seqs) and queues the rest.
        in_flight = sum(self._in_flight.values())
        running = min(in_flight, self.settings.serve.max_batch_size)
        return EngineStats(loaded=list(self._versions), running=running, waiting=in_flight - running)

    async def close(self) -> None:
        keys = list(self._processes)
        self._versions.clear()
        await asyncio.gather(*(self._processes.pop(key).stop() for key in keys))
