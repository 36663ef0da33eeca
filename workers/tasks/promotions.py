"""Promotion housekeeping and notification delivery tasks."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(name="modelgate.promotions.expire", soft_time_limit=60, time_limit=90)
def expire() -> list[str]:
    """Expire pending promotion requests whose time is up (beat; reads expire lazily too)."""
    from app.services import promotions

    return promotions.expire_due()


@shared_task(bind=True, name="modelgate.notifications.deliver", soft_time_limit=30,
             time_limit=45, acks_late=True)
def deliver(self: Any, event: dict[str, Any]) -> int | None:
    """Post one event to its webhook; retry transient failures with backoff, bounded."""
    from app.services import notifications

    try:
        return notifications.deliver(event)
    except notifications.DeliveryError as exc:
        attempt = self.request.retries + 1
        if exc.transient and attempt < notifications.MAX_ATTEMPTS:
            delay = notifications.backoff_seconds(self.request.retries)
            logger.info("webhook %s attempt %d failed (%s); retrying in %.0f s",
                        event.get("type"), attempt, exc, delay)
            raise self.retry(countdown=delay, max_retries=notifications.MAX_ATTEMPTS - 1
                             ) from None
        logger.warning("webhook %s dropped after %d attempt(s): %s", event.get("type"),
                       attempt, exc)
        return None
