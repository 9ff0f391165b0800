"""The local engine: continuous batching of concurrent requests over transformers models.

One scheduler thread decodes every loaded version's batch a step at a time (round robin over
versions with work). A request that arrives while a batch runs joins it at the next step: its
prompt is prefilled on its own and its key/value cache is merged into the batch's (both left-padded
to the same length); finished rows leave the batch at once, freeing their slot. Each request
streams its text as tokens come.

transformers' own continuous batching (``generation.continuous_batching``, paged attention) was
measured first on this project's CPU target: ``generate_batch`` of 16 prompts x 32 tokens on the
tiny model gave 15-44 tokens/s against 169 for 16 plain ``generate`` calls in a row (4-11x
slower), and its sampling settings are per manager unless their defaults are set at creation.
So this engine batches over the models' own forward pass and DynamicCache, which gave ~8x the
sequential throughput on the same machine.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fragua.models.templates import generation_prompt
from fragua.registry.versions import Registry
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
from fragua.serve.pool import ModelPool, ServedModel
from fragua.serve.sampling import AnswerText, next_tokens
from fragua.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Request:
    served: ServedModel
    prompt_ids: list[int]
    params: SamplingParams
    answer: AnswerText
    generator: Any
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    cancelled: bool = False
    done: bool = False

    def send(self, event: TextDelta | Completion | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass
class _Batch:
    """Requests of one version decoding together, and their shared key/value cache."""

    rows: list[_Request] = field(default_factory=list)
    cache: Any = None
    attention: Any = None  # rows x cached positions, 0 where a row is left-padded
    pending: list[int] = field(default_factory=list)  # each row's newest token, not yet in the cache


def _mergeable(cache: Any) -> bool:
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _cache_argument(model: Any) -> str:
    """The forward argument taking the key/value cache: ``cache`` in newer transformers 5
    releases, ``past_key_values`` before."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(target.forward).parameters else "past_key_values"


def _returned_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _left_pad(tensor: Any, length: int, dim: int) -> Any:
    import torch.nn.functional as F

    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    padding = [0, 0] * (tensor.dim() - 1 - (dim % tensor.dim())) + [missing, 0]
    return F.pad(tensor, padding)


class LocalEngine:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.pool = ModelPool(settings, registry)
        self._waiting: dict[str, deque[_Request]] = {}
        self._batches: dict[str, _Batch] = {}
        self._wake = threading.Condition()
        self._closed = False
        self._queued = 0  # requests taken but not yet in a batch (guarded by _wake)
        self._running = 0  # rows in batches; these counters are written by the scheduler thread only
        self._steps = 0
        self._decoded_rows = 0
        self._thread = threading.Thread(target=self._run, name="fragua-engine", daemon=True)
        self._thread.start()

    # The asyncio side -------------------------------------------------------------------

    async def load(self, version: str) -> None:
        served = await asyncio.to_thread(self.pool.acquire, version)
        self.pool.release(served)

    def stats(self) -> EngineStats:
        return EngineStats(loaded=self.pool.loaded(), running=self._running, waiting=self._queued, steps=self._steps, decoded_rows=self._decoded_rows)

    async def generate(self, version: str, prompt: Prompt, params: SamplingParams) -> AsyncIterator[TextDelta | Completion]:
        # A place in the queue is taken before anything else, so a burst of requests cannot all
        # pass the check while the first ones are still loading or encoding.
        with self._wake:
            if self._queued >= self.settings.serve.max_queued:
                raise Overloaded(f"{self.settings.serve.max_queued} requests are already waiting (serve.max_queued); retry shortly")
            self._queued += 1
        place_held = True  # until the request is queued; then the scheduler gives it back on admission
        served: ServedModel | None = None
        request: _Request | None = None
        try:
            served = await asyncio.to_thread(self.pool.acquire, version)
            prompt_ids = self._encode(served, prompt, params)
            generator = None
            if not params.greedy:
                import torch

                generator = torch.Generator(device=served.device)
                generator.manual_seed(params.seed if params.seed is not None else random.getrandbits(63))
            request = _Request(
                served, prompt_ids, params, AnswerText(served.tokenizer, params.stop, strip_leading=prompt.messages is not None),
                generator, asyncio.get_running_loop(), asyncio.Queue(),
            )
            with self._wake:
                if self._closed:
                    raise EngineError("the server is shutting down")
                self._waiting.setdefault(version, deque()).append(request)
                place_held = False
                self._wake.notify()
            while True:
                event = await request.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Completion):
                    return
        finally:
            if place_held:
                with self._wake:
                    self._queued -= 1
            if request is not None:
                request.cancelled = True  # a client gone mid-answer frees its row at the next step
            if served is not None:
                self.pool.release(served)

    def _encode(self, served: ServedModel, prompt: Prompt, params: SamplingParams) -> list[int]:
        tokenizer = served.tokenizer
        if prompt.messages is not None:
            ids = tokenizer(generation_prompt(tokenizer, prompt.messages), add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(prompt.text)["input_ids"]
        limit = self.settings.serve.max_prompt_tokens
        if len(ids) > limit:
            raise PromptTooLong(f"the prompt is {len(ids)} tokens; serve.max_prompt_tokens allows {limit}")
        if len(ids) + params.max_tokens > served.context:
            raise PromptTooLong(
                f"the prompt ({len(ids)} tokens) plus max_tokens ({params.max_tokens}) exceeds {served.version}'s context of "
                f"{served.context} tokens; shorten the prompt or lower max_tokens"
            )
        return ids

    async def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        await asyncio.to_thread(self._thread.join)

    # The scheduler thread -----------------------------------------------------------------

    def _run(self) -> None:
        import torch

        while True:
            with self._wake:
                while not self._closed and not self._has_work():
                    self._wake.wait()
                if self._closed:
                    self._fail_everything(EngineError("the server is shutting down"))
                    return
                versions = [v for v in set(self._waiting) | set(self._batches) if self._waiting.get(v) or self._batches.get(v)]
            for version in versions:
                batch = self._batches.setdefault(version, _Batch())
                try:
                    with torch.inference_mode():
                        self._admit(version, batch)
                        if batch.rows:
                            self._step(batch)
                except Exception as exc:  # one version's failure must not stop the others
                    logger.exception("generation with %s failed", version)
                    for request in batch.rows:
                        request.send(ModelUnavailable(f"generation with {version} failed: {exc}"))
                    self._batches.pop(version, None)
                    continue
                if not batch.rows:
                    self._batches.pop(version, None)
            self._running = sum(len(b.rows) for b in self._batches.values())

    def _has_work(self) -> bool:
        return any(self._waiting.values()) or any(b.rows for b in self._batches.values())

    def _fail_everything(self, error: EngineError) -> None:
        self._queued -= sum(len(queue) for queue in self._waiting.values())
        for queue in self._waiting.values():
            for request in queue:
                request.send(error)
        for batch in self._batches.values():
            for request in batch.rows:
                request.send(error)
        self._waiting.clear()
        self._batches.clear()

    def _admit(self, version: str, batch: _Batch) -> None:
        """Prefill waiting requests and merge them into the batch, up to serve.max_batch_size."""
        room = self.settings.serve.max_batch_size - len(batch.rows)
        if room <= 0 or (batch.rows and not _mergeable(batch.cache)):
            return
        with self._wake:
            queue = self._waiting.get(version) or deque()
            joining = [queue.popleft() for _ in range(min(room, len(queue)))]
            self._queued -= len(joining)
            if not queue:
                self._waiting.pop(version, None)
        joining = [r for r in joining if not r.cancelled]
        if not joining:
            return
        import torch

        served = joining[0].served
        device = served.device
        length = max(len(r.prompt_ids) for r in joining)
        pad = served.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (length - len(r.prompt_ids)) + r.prompt_ids for r in joining], device=device)
        attention = torch.tensor([[0] * (length - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in joining], device=device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        try:
            out = served.model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, logits_to_keep=1)
        except Exception as exc:
            for request in joining:
                request.send(ModelUnavailable(f"generation with {version} failed: {exc}"))
            raise
        if batch.rows:
            batch.cache, batch.attention = self._merge(batch, _returned_cache(out), attention)
        else:
            batch.cache, batch.attention = _returned_cache(out), attention
        batch.rows.extend(joining)
        batch.pending.extend(self._sample(joining, out.logits[:, -1, :]))
        self._retire(batch)

    @staticmethod
    def _merge(batch: _Batch, cache: Any, attention: Any) -> tuple[Any, Any]:
        import torch

        length = max(batch.attention.shape[1], attention.shape[1])
        for old, new in zip(batch.cache.layers, cache.layers):
            old.keys = torch.cat([_left_pad(old.keys, length, -2), _left_pad(new.keys, length, -2)], dim=0)
            old.values = torch.cat([_left_pad(old.values, length, -2), _left_pad(new.values, length, -2)], dim=0)
        return batch.cache, torch.cat([_left_pad(batch.attention, length, 1), _left_pad(attention, length, 1)], dim=0)

    def _step(self, batch: _Batch) -> None:
        """Feed every row's newest token, sample the next, stream, and retire finished rows."""
        import torch

        model = batch.rows[0].served.model
        device = batch.rows[0].served.device
        positions = batch.attention.sum(-1, keepdim=True)
        batch.attention = torch.cat([batch.attention, torch.ones((len(batch.rows), 1), dtype=batch.attention.dtype, device=device)], dim=1)
        tokens = torch.tensor(batch.pending, device=device).unsqueeze(1)
        cache = {_cache_argument(model): batch.cache}
        out = model(input_ids=tokens, attention_mask=batch.attention, position_ids=positions, use_cache=True, **cache)
        batch.cache = _returned_cache(out)
        self._steps += 1
        self._decoded_rows += len(batch.rows)
        batch.pending = self._sample(batch.rows, out.logits[:, -1, :])
        self._retire(batch)

    def _sample(self, rows: list[_Request], logits: Any) -> list[int]:
        """Each row's next token, handed to its answer; a row that is done is marked so."""
        chosen = next_tokens(logits, [r.params for r in rows], [r.generator for r in rows])
        for request, token in zip(rows, chosen):
            if request.cancelled:
                request.done = True
                continue
            answer = request.answer
            if token in request.served.stop_ids:
                self._finish(request, "stop")
                continue
            piece = answer.add(token)
            if piece:
                request.send(TextDelta(piece))
            if answer.stopped:
                self._finish(request, "stop")
            elif len(answer.tokens) >= request.params.max_tokens:
                self._finish(request, "length")
        return chosen

    @staticmethod
    def _finish(request: _Request, reason: str) -> None:
        text, rest = request.answer.final()
        if rest:
            request.send(TextDelta(rest))
        request.send(Completion(text, reason, len(request.prompt_ids), len(request.answer.tokens)))  # type: ignore[arg-type]
        request.done = True

    @staticmethod
    def _retire(batch: _Batch) -> None:
        """Drop finished rows from the batch and the cache, then cache columns no row uses any more."""
        keep = [i for i, r in enumerate(batch.rows) if not r.done]
        if len(keep) == len(batch.rows):
            return
        import torch

        batch.rows = [batch.rows[i] for i in keep]
        batch.pending = [batch.pending[i] for i in keep]
        if not keep:
            batch.cache = batch.attention = None
            return
        index = torch.tensor(keep, device=batch.attention.device)
        batch.attention = batch.attention[index]
        unused = int((batch.attention.cumsum(-1) == 0).sum(-1).min())  # left padding shared by every row
        for layer in batch.cache.layers:
            layer.keys = layer.keys[index, :, unused:, :]
            layer.values = layer.values[index, :, unused:, :]
        batch.attention = batch.attention[:, unused:]
