from __future__ import annotations

import pytest

from blocks import save_wandb_key
from fragua.settings import Settings
from fragua.tracking import resolve_api_key


def test_wandb_key_from_a_secret_block(prefect_api):
    name = save_wandb_key("wandb-key-from-block-987")
    settings = Settings(tracking={"mode": "online", "api_key_block": name})
    assert resolve_api_key(settings.tracking) == "wandb-key-from-block-987"
    assert "wandb-key-from-block-987" not in str(settings.redacted())


def test_key_and_block_together_are_rejected():
    with pytest.raises(ValueError, match="not both"):
        Settings(tracking={"api_key": "k", "api_key_block": "b"})


def test_empty_key_is_rejected(prefect_api):
    with pytest.raises(ValueError, match="empty"):
        save_wandb_key("  ")
