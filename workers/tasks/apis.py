"""The publish job: a new revision of an environment's gateway API, made current atomically."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from workers.tasks._runner import JobContext, run_job


@shared_task(bind=True, name="modelgate.apis.publish", soft_time_limit=120, time_limit=150)
def publish(self: Any, job_id: str) -> None:
    """Run a publish job (params: environment, rate_limit, policy_xml; all optional)."""
    run_job(self, job_id, _publish)


def _publish(ctx: JobContext) -> dict[str, Any]:
    from app.services import apis

    return apis.run_publish(ctx, ctx.params)
