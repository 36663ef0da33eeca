"""The pipeline job: provision → train → deploy → publish as child jobs, run in order."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from workers.tasks._runner import JobContext, run_job


@shared_task(bind=True, name="modelgate.pipeline.run", soft_time_limit=3500, time_limit=3600)
def pipeline(self: Any, job_id: str) -> None:
    """Run a pipeline job (params: until = provision|train|deploy|publish, environment)."""
    run_job(self, job_id, _pipeline)


def _pipeline(ctx: JobContext) -> dict[str, Any]:
    from app.services import pipelines

    return pipelines.run_pipeline(ctx, ctx.params)
