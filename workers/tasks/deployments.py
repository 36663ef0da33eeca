"""The deploy and rotate-keys jobs, and the beat task that queues rotations when keys are due."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from workers.tasks._runner import JobContext, run_job


@shared_task(bind=True, name="modelgate.deployments.deploy", soft_time_limit=900,
             time_limit=960)
def deploy(self: Any, job_id: str) -> None:
    """Run a deploy job (params: ``environment``, ``version``, ``rollback``)."""
    run_job(self, job_id, _deploy)


@shared_task(bind=True, name="modelgate.deployments.rotate_keys", soft_time_limit=300,
             time_limit=360)
def rotate_keys(self: Any, job_id: str) -> None:
    """Run a rotate-keys job (params: ``environment``)."""
    run_job(self, job_id, _rotate_keys)


@shared_task(name="modelgate.deployments.rotate_due", soft_time_limit=60, time_limit=90)
def rotate_due() -> list[str]:
    """Queue rotate-keys for environments whose keys are older than keys.rotation_days."""
    from app.services import rotations

    return rotations.queue_due()


def _deploy(ctx: JobContext) -> dict[str, Any]:
    from app.services import rollout

    return rollout.run_deploy(ctx, ctx.params)


def _rotate_keys(ctx: JobContext) -> dict[str, Any]:
    from app.services import rollout

    return rollout.run_rotate_keys(ctx, ctx.params)
