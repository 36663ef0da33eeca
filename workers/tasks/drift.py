"""The beat task that compares each period's scoring sample with the training baseline."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="modelgate.drift.check", soft_time_limit=300, time_limit=360)
def check() -> dict[str, list[int]]:
    """Run a drift check of every environment (beat, every DRIFT_CHECK_SECONDS)."""
    from app.services import drift

    return drift.run_checks()
