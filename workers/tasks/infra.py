"""The provision job (create or tear down the workspace on the configured backend) and the
plan job (what the chain would create or change, changing nothing)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from workers.tasks._runner import JobContext, run_job


@shared_task(bind=True, name="modelgate.infra.provision", soft_time_limit=900, time_limit=960)
def provision(self: Any, job_id: str) -> None:
    """Run a provision job (params: ``teardown`` true removes the workspace instead)."""
    run_job(self, job_id, _provision)


def _provision(ctx: JobContext) -> dict[str, Any]:
    from app.services import provisioning

    return provisioning.run_provision(ctx, ctx.params)


@shared_task(bind=True, name="modelgate.infra.plan", soft_time_limit=300, time_limit=330)
def plan(self: Any, job_id: str) -> None:
    """Run a plan job (params: ``offline`` true reads nothing)."""
    run_job(self, job_id, _plan)


def _plan(ctx: JobContext) -> dict[str, Any]:
    from app.services import plans

    return plans.run_plan(ctx, ctx.params)
