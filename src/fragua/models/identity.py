"""Base models identified by content, not by where they lie.

A version's lineage records the base model it was trained from twice: the path or hub id as
the settings resolved it (``base_model``) and an identity that survives moving the work
directory (``base_model_id``): a hash of a local folder's config and weight files, or the hub
id with the revision found in the local Hugging Face cache. Incremental training, rollback,
export and chat then accept any folder with the same content, wherever it is mounted.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from fragua.models.loading import ModelLoadError

# What makes a base model the same model: its architecture and its weights.
IDENTITY_FILES = ("config.json",)
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")


def _content_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and (p.name in IDENTITY_FILES or p.suffix in WEIGHT_SUFFIXES))


@lru_cache(maxsize=16)
def _folder_digest(folder: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    """Cached by the files' names, sizes and modification times: a 15 GB base is hashed once per process."""
    digest = hashlib.sha256()
    for relative, _, _ in stamp:
        file_digest = hashlib.sha256()
        with (Path(folder) / relative).open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                file_digest.update(chunk)
        digest.update(f"{relative}\t{file_digest.hexdigest()}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def _hub_revision(repo_id: str) -> str | None:
    """The commit the local Hugging Face cache resolves ``main`` to, if the model was downloaded."""
    try:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name
    except ImportError:
        return None
    ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "refs" / "main"
    return ref.read_text().strip() if ref.is_file() else None


def base_model_identity(name_or_path: str) -> str:
    """``sha256:<hex>`` of a local folder's config and weights, or ``hub:<id>@<revision>`` for a hub id."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        files = _content_files(folder)
        if not files:
            raise ModelLoadError(f"{folder}: no config.json or weight files, so it is not a model folder (train.base_model)")
        stamp = tuple((p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
        return _folder_digest(str(folder.resolve()), stamp)
    if folder.is_absolute() or name_or_path.startswith((".", "~")):
        raise ModelLoadError(f"base model folder {folder} does not exist; set train.base_model to the folder or hub id of the base model")
    return f"hub:{name_or_path}@{_hub_revision(name_or_path) or 'main'}"


def same_base(lineage: dict[str, Any], base: str) -> bool:
    """Whether the base model ``base`` (as the settings resolve it) is the one ``lineage`` was trained from.

    Lineages written before identities were recorded name only a path: the same path, or a
    folder with the same content when the old path still exists, or else a folder of the
    same name (a moved work directory) counts as the same base."""
    recorded = lineage.get("base_model")
    identity = lineage.get("base_model_id")
    if identity:
        try:
            return base_model_identity(base) == identity
        except ModelLoadError:  # nothing at that path (yet): not the base
            return False
    if recorded is None:
        return False
    if recorded == base:
        return True
    if Path(recorded).is_dir():
        return Path(base).is_dir() and base_model_identity(recorded) == base_model_identity(base)
    return Path(base).is_dir() and Path(recorded).name == Path(base).name


def locate_base(lineage: dict[str, Any], configured: str | None) -> str | None:
    """Where to load the base model of a version whose lineage is ``lineage`` from.

    The configured base (train.base_model, or the work directory's tiny base) when it is the
    same model, wherever it lies now; else the recorded path or hub id; an error when that
    path is gone or holds other weights. None when the lineage names no base (the adapter's
    own config then says)."""
    recorded = lineage.get("base_model")
    if recorded is None:
        return None
    if configured and same_base(lineage, configured):
        return configured
    identity = lineage.get("base_model_id")
    local = Path(recorded).is_absolute()
    if local and (not Path(recorded).is_dir() or (identity and base_model_identity(recorded) != identity)):
        raise ModelLoadError(
            f"the base model this version was trained from ({identity or recorded}) is no longer at {recorded}, and the "
            f"configured base {configured or '(none)'} is a different model; set train.base_model to a copy of it"
        )
    return recorded
