"""Prefect tasks: thin wrappers adding retries, cache policy and logging to one fragua call each."""

from __future__ import annotations

from typing import Any

from fragua.data.ingest import IngestError
from fragua.models.loading import ModelLoadError
from fragua.registry.versions import RegistryError
from fragua.storage.store import StoreConfigurationError

# Errors that will fail the same way on every attempt: bad input, bad settings, a lost
# alias race, a model that cannot load, a missing bucket or wrong credentials. Retrying
# them only delays the message.
PERMANENT_ERRORS = (IngestError, RegistryError, ModelLoadError, StoreConfigurationError, ValueError, TypeError, KeyError, FileNotFoundError)


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """retry_condition_fn: retry storage/network/process failures, not user or logic errors."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, PERMANENT_ERRORS)


STORAGE_RETRY_DELAYS = [2, 10, 30]
