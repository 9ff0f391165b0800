"""Prefect blocks Fragua uses: connection details and credentials only, never hyperparameters.

The W&B API key lives in a Prefect ``Secret`` block; ``tracking.api_key_block`` names it,
so flows started from deployments get the key without it appearing in parameters or env.
"""

from __future__ import annotations

from prefect.blocks.system import Secret

DEFAULT_WANDB_KEY_BLOCK = "fragua-wandb-api-key"


def save_wandb_key(api_key: str, name: str = DEFAULT_WANDB_KEY_BLOCK) -> str:
    """Store (or replace) the W&B API key as a Secret block; returns the block name."""
    if not api_key.strip():
        raise ValueError("the W&B API key is empty")
    Secret(value=api_key).save(name, overwrite=True)
    return name
