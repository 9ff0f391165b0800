"""Deploy, rollback and failed-run messages through a Prefect notification block.

Prefect's own blocks do the sending (``custom-webhook`` by default, or Slack, Teams, email
... any ``NotificationBlock``), so a team points Fragua at the channel it already uses.
"""

from __future__ import annotations

from typing import Any, Literal

from .settings import NotificationSettings

Event = Literal["deploy", "rollback", "failure"]


class NotificationError(RuntimeError):
    pass


def load_notification_block(slug: str) -> Any:
    import prefect.blocks.notifications  # noqa: F401  (registers the notification block types)
    from prefect.blocks.core import Block

    try:
        return Block.load(slug)
    except (ValueError, KeyError) as exc:
        raise NotificationError(
            f"cannot load the notification block {slug!r} named by notifications.block: {exc}. "
            "Create it with `fragua blocks save-webhook URL` or in the Prefect UI (Blocks)."
        ) from exc


def send(settings: NotificationSettings, event: Event, subject: str, body: str) -> bool:
    """Send when a block is configured and the event is enabled; returns whether it sent."""
    if settings.block is None or event not in settings.events:
        return False
    load_notification_block(settings.block).notify(body=body, subject=subject)
    return True
