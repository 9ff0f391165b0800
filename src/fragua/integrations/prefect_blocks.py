"""Loading a Prefect block that a setting names, with an error that says how to create it."""

from __future__ import annotations

import importlib
from typing import Any


def load_block(slug: str, *, setting: str, kind: str, how_to_create: str, types_module: str, error: type[Exception]) -> Any:
    """The block 'type/name' in ``slug``; ``types_module`` is imported first so its block types are registered."""
    importlib.import_module(types_module)
    from prefect.blocks.core import Block

    try:
        return Block.load(slug)
    except (ValueError, KeyError) as exc:
        raise error(
            f"cannot load the {kind} block {slug!r} named by {setting}: {exc}. "
            f"Create it with {how_to_create} or in the Prefect UI (Blocks)."
        ) from exc
