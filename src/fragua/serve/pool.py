"""Registry versions loaded for serving.

Each version is a verified local copy (``Registry.fetch`` checks every file's sha256) loaded
once. Adapter versions trained on the same base share one copy of its weights: each gets its
own module tree whose base parameters are the very tensors of the loaded base, with its LoRA
layers injected there, so ten adapters of a 7B base cost one 7B plus ten adapters. Beyond
``serve.memory_budget_mb`` the least recently used version that no request is using is
unloaded (and its base, once no version needs it).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fragua.inference.chat import context_length
from fragua.models.identity import locate_base
from fragua.models.loading import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    ModelLoadError,
    is_adapter,
    load_causal_lm,
    load_for_inference,
    load_tokenizer,
)
from fragua.models.templates import stop_token_ids
from fragua.registry.versions import Registry, RegistryError
from fragua.serve.engine import ModelUnavailable
from fragua.settings import Settings

logger = logging.getLogger(__name__)
MIB = 1024 * 1024


def tensor_bytes(tensors: Any) -> int:
    """Bytes of distinct storages among ``tensors`` (tied weights counted once)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def share_weights(model: Any) -> Any:
    """A copy of ``model``'s module tree whose parameters and buffers are ``model``'s own tensors:
    adapters injected into the copy leave the original, and every other copy, untouched."""
    memo = {id(tensor): tensor for tensor in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


@dataclass
class _Base:
    model: Any
    bytes: int
    versions: set[str] = field(default_factory=set)


@dataclass
class ServedModel:
    """One loaded version, ready for the engine."""

    version: str
    model: Any
    tokenizer: Any
    context: int
    stop_ids: list[int]
    own_bytes: int  # weights of its own: the adapter (and resized embeddings), or the whole model
    base: str | None = None  # key of the shared base, for adapter versions
    users: int = 0  # requests in flight on it; never unloaded while above 0

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device


class ModelPool:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.budget = settings.serve.memory_budget_mb * MIB
        self._models: OrderedDict[str, ServedModel] = OrderedDict()  # least recently used first
        self._bases: dict[str, _Base] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def used_bytes(self) -> int:
        with self._lock:
            return self._used_bytes()

    def _used_bytes(self) -> int:
        return sum(b.bytes for b in self._bases.values()) + sum(m.own_bytes for m in self._models.values())

    def acquire(self, version: str) -> ServedModel:
        """``version`` loaded and marked in use (call ``release`` when done); loads of the same
        version in parallel wait for one another instead of loading twice."""
        with self._lock:
            served = self._take(version)
            if served is not None:
                return served
            gate = self._loading.setdefault(version, threading.Lock())
        with gate:
            with self._lock:
                served = self._take(version)
                if served is not None:
                    return served
            try:
                served, base = self._load(version)
            except BaseException:
                with self._lock:
                    self._loading.pop(version, None)
                    for key in [key for key, base in self._bases.items() if not base.versions]:
                        del self._bases[key]  # loaded for this version only
                raise
            with self._lock:
                self._models[version] = served
                if base is not None:
                    self._bases.setdefault(served.base, base).versions.add(version)
                served.users += 1
                self._loading.pop(version, None)
                self._evict_over_budget()
            logger.info("loaded %s (%.1f MiB of its own; %.1f MiB in use)", version, served.own_bytes / MIB, self.used_bytes() / MIB)
            return served

    def release(self, served: ServedModel) -> None:
        with self._lock:
            served.users -= 1
            self._evict_over_budget()

    def _take(self, version: str) -> ServedModel | None:
        served = self._models.get(version)
        if served is not None:
            self._models.move_to_end(version)
            served.users += 1
        return served

    def _evict_over_budget(self) -> None:
        for version in list(self._models):
            if self._used_bytes() <= self.budget:
                return
            served = self._models[version]
            if served.users > 0 or version == next(reversed(self._models)):
                continue  # in use, or the one just asked for: over budget rather than unusable
            del self._models[version]
            if served.base is not None:
                base = self._bases[served.base]
                base.versions.discard(version)
                if not base.versions:
                    del self._bases[served.base]
            logger.info("unloaded %s (serve.memory_budget_mb %d exceeded)", version, self.settings.serve.memory_budget_mb)

    def _load(self, version: str) -> tuple[ServedModel, _Base | None]:
        try:
            manifest = self.registry.manifest(version)
            folder = self.registry.fetch(version)
            train = self.settings.train
            if not is_adapter(folder):
                loaded = load_for_inference(folder, train)
                return self._served(version, loaded.model, loaded.tokenizer, tensor_bytes(loaded.model.parameters()), None), None
            base_ref = locate_base(manifest.lineage, self.settings.base_model_ref)
            base_ref = base_ref or json.loads((folder / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
            if not (folder / ADAPTER_WEIGHTS).is_file():
                raise ModelLoadError(f"{version}: no {ADAPTER_WEIGHTS}; Fragua loads safetensors weights only")
            base = self._base(base_ref)
            tokenizer = load_tokenizer(str(folder), trust_remote_code=train.trust_remote_code)
            model = share_weights(base.model)
            if model.get_input_embeddings().num_embeddings != len(tokenizer):
                model.resize_token_embeddings(len(tokenizer))
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
            model.eval()
            shared = {t.untyped_storage().data_ptr() for t in base.model.parameters()}
            own = tensor_bytes(p for p in model.parameters() if p.untyped_storage().data_ptr() not in shared)
            return self._served(version, model, tokenizer, own, base_ref), base
        except (RegistryError, ModelLoadError, OSError, ValueError) as exc:
            raise ModelUnavailable(f"{version} cannot be loaded: {exc}") from exc

    def _base(self, reference: str) -> _Base:
        with self._lock:
            base = self._bases.get(reference)
        if base is None:
            model = load_causal_lm(reference, self.settings.train)
            model.eval()
            base = _Base(model, tensor_bytes(model.parameters()))
            with self._lock:
                base = self._bases.setdefault(reference, base)
        return base

    @staticmethod
    def _served(version: str, model: Any, tokenizer: Any, own_bytes: int, base: str | None) -> ServedModel:
        return ServedModel(version, model, tokenizer, context_length(model), stop_token_ids(tokenizer), own_bytes, base)
