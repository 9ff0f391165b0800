"""What a training run can reuse from an earlier one, keyed by content: tokenised splits and
the packing check's verdict, under ``work_dir/cache/training/``.

A tokenised split is keyed by what it was made from: the split's identity (dataset version
id, split name, domain filter; given by the caller, None when the rows have no stable
identity, e.g. an incremental selection), the tokenizer's content (vocabulary, merges,
special tokens, chat template), ``max_seq_length`` and the source of the encoding code.
The packing verdict is keyed by the model's architecture (its config), the kernels compared,
the dtype and quantisation, and the torch and transformers versions: the check asks whether
the attention code keeps packed examples apart, which the weights do not change.

Entries are written to a staging folder and renamed into place, so a reader never sees half
of one and two runs writing the same entry both succeed. The newest ``KEEP_SPLITS``
tokenised splits are kept (a hit counts as use); delete the folder to reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("fragua.train")

KEEP_SPLITS = 8
SPLITS_FOLDER, PACKING_FOLDER = "tokenized", "packing"
COUNTS_FILE = "counts.json"


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def source_digest(*files: str) -> str:
    """A hash of source files: the code that makes an entry is part of its key, so a change to it invalidates the entry."""
    return _digest([Path(file).read_bytes().hex() for file in files])


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """A hash of everything that decides a tokenizer's output; None for a slow (Python) tokenizer, which has no serialised form."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    return _digest({
        "class": type(tokenizer).__name__,
        "backend": hashlib.sha256(backend.to_str().encode()).hexdigest(),
        "chat_template": tokenizer.chat_template,
        "special": tokenizer.special_tokens_map,
        "added": {token: index for token, index in tokenizer.get_added_vocab().items()},
    })


@dataclass
class CachedSplit:
    """A tokenised split as the cache holds it: the rows as a ``datasets.Dataset`` and EncodedSplit's counts."""

    dataset: Any
    truncated: int
    dropped: int
    trained_tokens: int
    probe_rows: list[list[int]]


@dataclass
class TrainingCache:
    """``folder``: the cache's root; ``split_ids``: split name -> the identity of its rows (only those splits are cached)."""

    folder: Path
    split_ids: dict[str, str] = field(default_factory=dict)

    def split_key(self, split: str, tokenizer: Any, max_length: int, encoder: str) -> str | None:
        """``encoder``: a digest of the code that encodes records (source_digest)."""
        identity = self.split_ids.get(split)
        fingerprint = tokenizer_fingerprint(tokenizer) if identity else None
        if fingerprint is None:
            return None
        return _digest({"split": identity, "tokenizer": fingerprint, "max_length": max_length, "code": encoder})

    def load_split(self, key: str) -> CachedSplit | None:
        from datasets import load_from_disk

        entry = self.folder / SPLITS_FOLDER / key
        try:
            counts = json.loads((entry / COUNTS_FILE).read_text())
            dataset = load_from_disk(str(entry / "rows"))
        except (OSError, ValueError) as exc:
            if entry.exists():
                logger.warning("tokenised split cache %s is unreadable (%s); tokenising again", entry, exc)
            return None
        os.utime(entry)  # recently used: kept by the pruning below
        return CachedSplit(dataset, counts["truncated"], counts["dropped"], counts["trained_tokens"], counts["probe_rows"])

    def store_split(self, key: str, split: CachedSplit) -> None:
        counts = {"truncated": split.truncated, "dropped": split.dropped, "trained_tokens": split.trained_tokens, "probe_rows": split.probe_rows}

        def write(staging: Path) -> None:
            from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

            # a progress bar per save would interleave with the command's own output
            shown = not are_progress_bars_disabled()
            disable_progress_bars()
            try:
                split.dataset.save_to_disk(str(staging / "rows"))
            finally:
                if shown:
                    enable_progress_bars()
            (staging / COUNTS_FILE).write_text(json.dumps(counts))

        self._publish(self.folder / SPLITS_FOLDER / key, write)
        self._prune(self.folder / SPLITS_FOLDER, KEEP_SPLITS)

    def packing_verdict(self, key: str) -> bool | None:
        try:
            return bool(json.loads((self.folder / PACKING_FOLDER / key / "verdict.json").read_text())["exact"])
        except (OSError, ValueError, KeyError):
            return None

    def store_packing_verdict(self, key: str, exact: bool) -> None:
        self._publish(self.folder / PACKING_FOLDER / key, lambda staging: (staging / "verdict.json").write_text(json.dumps({"exact": exact})))

    def _publish(self, entry: Path, write: Callable[[Path], None]) -> None:
        """Write an entry into a staging folder, then rename it into place (a concurrent writer's copy wins if it was first)."""
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
        try:
            write(staging)
            staging.rename(entry)
        except OSError as exc:
            if not entry.is_dir():
                logger.warning("could not write the training cache entry %s: %s", entry, exc)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _prune(folder: Path, keep: int) -> None:
        entries = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.stat().st_mtime, reverse=True)
        for stale in entries[keep:]:
            shutil.rmtree(stale, ignore_errors=True)


def packing_key(model: Any, reference: str, candidate: str) -> str:
    """The packing check's question: this architecture, these kernels, this dtype and quantisation, these library versions."""
    import torch
    import transformers

    config = {k: v for k, v in model.config.to_dict().items() if k not in ("_name_or_path", "_commit_hash")}  # where it lies, not what it is
    return _digest({
        "class": type(model).__name__,
        "config": config,
        "reference": reference,
        "candidate": candidate,
        "dtype": str(model.dtype),
        "quantized": bool(getattr(model, "is_quantized", False)),
        "device": str(next(model.parameters()).device.type),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    })
