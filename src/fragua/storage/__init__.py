"""Object storage behind one interface: a local directory or an S3 bucket."""

from __future__ import annotations

from fragua.settings import Settings
from fragua.storage.store import LocalStore, ObjectStore


def open_store(settings: Settings) -> ObjectStore:
    """The configured registry backend: a local directory or an S3 bucket."""
    if settings.registry.backend == "s3":
        from fragua.storage.s3 import open_s3_store

        return open_s3_store(settings.registry)
    return LocalStore(settings.registry_path)
