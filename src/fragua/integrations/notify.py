"""Deploy, canary, rollback and failed-run messages through a Prefect notification block.

Prefect's own blocks do the sending (``custom-webhook`` by default, or Slack, Teams, email
... any ``NotificationBlock``), so a team points Fragua at the channel it already uses.
"""

from __future__ import annotations

from typing import Any, Literal

from fragua.integrations.prefect_blocks import load_block
from fragua.settings import NotificationSettings

Event = Literal["deploy", "canary", "rollback", "failure"]


class NotificationError(RuntimeError):
    pass


def load_notification_block(slug: str) -> Any:
    return load_block(
        slug, setting="notifications.block", kind="notification", how_to_create="`fragua blocks save-webhook URL`",
        types_module="prefect.blocks.notifications", error=NotificationError,
    )


def send(settings: NotificationSettings, event: Event, subject: str, body: str) -> bool:
    """Send when a block is configured and the event is enabled; returns whether it sent."""
    if settings.block is None or event not in settings.events:
        return False
    load_notification_block(settings.block).notify(body=body, subject=subject)
    return True
