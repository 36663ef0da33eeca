"""The train job: train the configured model on a dataset version and register it."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from workers.tasks._runner import JobContext, run_job


@shared_task(bind=True, name="modelgate.models.train", soft_time_limit=1800, time_limit=1860)
def train(self: Any, job_id: str) -> None:
    """Run a train job (params: optional ``dataset_version`` and ``model`` overrides)."""
    run_job(self, job_id, _train)


def _train(ctx: JobContext) -> dict[str, Any]:
    from app.services import training

    return training.run_train(ctx, ctx.params)
