"""The model registry: versions, aliases and their history, export."""

from __future__ import annotations

from fragua.registry.versions import Registry
from fragua.settings import Settings
from fragua.storage import open_store
from fragua.storage.progress import transfer_progress


def open_registry(settings: Settings) -> Registry:
    """The registry on the configured storage; versions it fetches are cached under work_dir/cache/models,
    and what alias moves verified is remembered under work_dir/cache/verified."""
    cache = settings.work_path / "cache"
    return Registry(
        open_store(settings), settings.registry.model_name, progress=transfer_progress, cache_root=cache / "models", verification_cache=cache / "verified"
    )


def version_file(settings: Settings, version: str, relative: str) -> str:
    """Where a file of a published version lives, for people to open."""
    registry = open_registry(settings)
    return f"{registry.store.describe()}/{registry.version_prefix(version)}/{relative}"
