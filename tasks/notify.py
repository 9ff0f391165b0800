from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fragua.integrations import notify
from fragua.settings import NotificationSettings


@task(name="notify", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def notify_task(settings: NotificationSettings, event: notify.Event, subject: str, body: str) -> bool:
    sent = notify.send(settings, event, subject, body)
    if sent:
        get_run_logger().info("sent %s notification through %s", event, settings.block)
    return sent
