"""The model registry: versions, aliases and their history, export."""

from __future__ import annotations

from fragua.registry.versions import Registry
from fragua.settings import Settings
from fragua.storage import open_store
from fragua.storage.progress import transfer_progress


def open_registry(settings: Settings) -> Registry:
    """The registry on the configured storage; versions it fetches are cached under work_dir/cache/models."""
    return Registry(open_store(settings), settings.registry.model_name, progress=transfer_progress, cache_root=settings.work_path / "cache" / "models")
