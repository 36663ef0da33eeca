"""The deploy and rotate-keys jobs, and the beat task that queues rotations when keys are due."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from workers.tasks._pipeline import check_params, pipeline_config
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
    import datetime as dt

    from sqlalchemy import select

    from app.db import Job, JobStatus
    from app.extensions import db
    from app.services import deployments, jobs
    from app.services.kinds import JobKind

    days = pipeline_config().keys.rotation_days
    queued = []
    for env in deployments.rotation_due(dt.timedelta(days=days)):
        pending = db.session.scalars(select(Job).where(
            Job.kind == JobKind.ROTATE_KEYS.value,
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))).all()
        if any((j.params or {}).get("environment", "staging") == env for j in pending):
            continue
        job = jobs.submit(JobKind.ROTATE_KEYS, {"environment": env}, "modelgate-scheduler")
        queued.append(job.id)
    return queued


def _environment(ctx: JobContext) -> str:
    from app.errors import ValidationError

    env = ctx.params.get("environment", "staging")
    names = pipeline_config().environment_names
    if not isinstance(env, str) or env not in names:
        raise ValidationError(f"params.environment: must be one of {', '.join(names)}",
                              errors=[{"field": "params.environment",
                                       "message": "unknown environment"}])
    return env


def _settings(ready_timeout: float) -> Any:
    from flask import current_app

    from app.services.rollout import RolloutSettings

    config = current_app.config
    return RolloutSettings(ready_timeout_seconds=ready_timeout,
                           drain_seconds=float(config["DEPLOY_DRAIN_SECONDS"]),
                           key_switch_grace_seconds=float(config["KEY_SWITCH_GRACE_SECONDS"]),
                           fault_at=str(config["FAULT_AT"]))


def _deploy(ctx: JobContext) -> dict[str, Any]:
    """Deploy a registered version (default: the latest) to an environment, blue/green."""
    from app.errors import ValidationError
    from app.ml.registry import RegistryError
    from app.pipeline_config import model_registry
    from app.services import deployments, jobs, rollout

    check_params(ctx.params, ("environment", "version", "rollback"))
    env = _environment(ctx)
    config = pipeline_config()
    registry = model_registry(config.mlflow, ctx.home)
    name = config.model.name
    rollback = ctx.params.get("rollback", False)
    version = ctx.params.get("version")
    if not isinstance(rollback, bool):
        raise ValidationError("params.rollback: must be true or false",
                              errors=[{"field": "params.rollback", "message": "not a boolean"}])
    if rollback and version is not None:
        raise ValidationError("params: give either version or rollback, not both",
                              errors=[{"field": "params.version", "message": "with rollback"}])
    own = deployments.by_job(ctx.job_id)
    if own is not None:  # a redelivery resumes the slot it created, whatever "latest" is now
        version, name = own.model_version, own.model_name
    elif rollback:
        prev = deployments.previous(env)
        if prev is None:
            raise ValidationError(f"{env} has no previous deployment to roll back to")
        version, name = prev.model_version, prev.model_name
        ctx.log(f"rolling back {env} to v{version} (slot {prev.id})")
    elif version is None:
        try:
            found = registry.list_versions(name)
        except RegistryError as exc:
            raise ValidationError(f"MLflow: {exc}") from None
        if not found:
            raise ValidationError(f"model {name!r} has no registered version; train one first")
        version = found[0].version
    else:
        version = str(version)
        try:
            registry.get_version(name, version)
        except RegistryError:
            raise ValidationError(f"params.version: {name} has no version {version}",
                                  errors=[{"field": "params.version",
                                           "message": "no such version"}]) from None
    size = config.environment(env)
    request = rollout.DeployRequest(
        environment=env, model_name=name, model_version=str(version), replicas=size.replicas,
        resources={"cpu": size.cpu, "memory_mb": size.memory_mb},
        requested_by=jobs.get(ctx.job_id).requested_by, rollback=rollback)
    ctx.log(f"deploying {name} v{version} to {env} ({size.replicas} replica(s))")
    return rollout.deploy(ctx.home, ctx, request, registry,
                          _settings(config.runtime.ready_timeout_seconds))


def _rotate_keys(ctx: JobContext) -> dict[str, Any]:
    """Rotate the backend keys of an environment's active slot without a 401 window."""
    from app.services import jobs, rollout

    check_params(ctx.params, ("environment",))
    env = _environment(ctx)
    config = pipeline_config()
    return rollout.rotate_keys(ctx.home, ctx, env, jobs.get(ctx.job_id).requested_by,
                               _settings(config.runtime.ready_timeout_seconds))
