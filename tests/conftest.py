from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Prefect's home (profiles, local database) stays out of the user's HOME during tests.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="fragua-prefect-home-"))

from fragua.settings import Settings, resource_path  # noqa: E402

EXAMPLES = resource_path("resources", "examples")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path):
    """No FRAGUA_* or W&B variables from the outer shell leak into a test."""
    for name in list(os.environ):
        if name.startswith("FRAGUA_") or name.startswith("WANDB_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The embedded tiny base model, built once per test session."""
    from fragua.base_model import build_tiny_base
    from fragua.settings import TinyBaseSettings

    return build_tiny_base(tmp_path_factory.mktemp("base") / "fragua-tiny", TinyBaseSettings())


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_base):
    from fragua.modeling import load_tokenizer

    return load_tokenizer(str(tiny_base))


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A temporary Prefect API (own SQLite database) for flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def make_settings(work_dir: Path, **overrides) -> Settings:
    overrides.setdefault("tracking", {"mode": "disabled"})
    return Settings(work_dir=work_dir, **overrides)
