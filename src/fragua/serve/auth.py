"""The bearer token of `fragua serve`: serve.api_key, or the Prefect Secret block serve.api_key_block."""

from __future__ import annotations

from fragua.integrations.prefect_blocks import load_block
from fragua.settings.serve import ServeSettings


class ServeError(RuntimeError):
    """The server cannot start as configured; the message says which setting to fix."""


def api_key(settings: ServeSettings) -> str | None:
    """The token clients must send, None when the server is open (neither setting given)."""
    if settings.api_key_block is not None:
        block = load_block(
            settings.api_key_block, setting="serve.api_key_block", kind="Secret",
            how_to_create="`prefect block create secret` (or Secret(value=...).save(NAME) in Python)",
            types_module="prefect.blocks.system", error=ServeError,
        )
        value = block.get()
        if not isinstance(value, str) or not value.strip():
            raise ServeError(f"the Secret block {settings.api_key_block!r} named by serve.api_key_block must hold a non-empty text token")
        return value
    if settings.api_key is not None:
        value = settings.api_key.get_secret_value()
        if not value.strip():
            raise ServeError("serve.api_key is empty; set a token (e.g. the output of `openssl rand -hex 32`) or leave it unset for no authentication")
        return value
    return None
