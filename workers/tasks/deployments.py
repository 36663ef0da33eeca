"""The deploy and rotate-keys jobs, and the beat task that queues rotations when keys are due."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import shared_task

from app.labels import plural
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


@dataclass
class _Stage:
    """One stage of a staged job: its progress mapped into [start, start + span] percent."""

    ctx: JobContext
    start: int
    span: int
    label: str

    @property
    def job_id(self) -> str:
        return self.ctx.job_id

    def progress(self, percent: int, step: str) -> None:
        self.ctx.progress(self.start + percent * self.span // 100, f"{self.label}: {step}")

    def log(self, message: str, *, level: str = "INFO") -> None:
        self.ctx.log(message, level=level)

    def check_cancelled(self) -> None:
        self.ctx.check_cancelled()


def _deploy(ctx: JobContext) -> dict[str, Any]:
    """Deploy a registered version (default: the latest) to an environment, blue/green.

    In a protected environment the job runs only under its grant (an approved promotion or a
    break-glass rollback), and when the environment has no current API revision it goes on to
    publish the default policy, so an approved promotion ends with the environment answering.
    """
    from app.errors import ValidationError
    from app.ml.registry import RegistryError
    from app.pipeline_config import model_registry
    from app.services import apis, deployments, jobs, protected, rollout
    from app.services.kinds import JobKind

    check_params(ctx.params, ("environment", "version", "rollback"))
    env = _environment(ctx)
    grant = protected.authorize_run(ctx.job_id, JobKind.DEPLOY, env)
    publish_after = grant is not None and apis.current(apis.api_name(env)) is None
    if grant is not None:
        ctx.log(f"{env} is protected; running under {grant.describe()}")
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
    total = 2 if publish_after else 1
    ctx.log(f"stage 1/{total}: deploying {name} v{version} to {env} blue/green "
            f"({plural(size.replicas, 'replica')})")
    stage = _Stage(ctx, 0, 80 if publish_after else 100, f"deploy (1/{total})")
    result = rollout.deploy(ctx.home, stage, request, registry,
                            _settings(config.runtime.ready_timeout_seconds))
    if publish_after:
        ctx.log(f"stage 2/2: {env} has no API yet; publishing the default policy")
        result["published"] = publish_default(_Stage(ctx, 80, 20, "publish (2/2)"), env)
    return result


def publish_default(stage: Any, environment: str) -> dict[str, Any]:
    """Publish the default policy of an environment as a new revision (a stage of a job)."""
    from flask import current_app

    from app.services import apis, jobs

    stage.progress(0, f"rendering the default policy for {environment}")
    policy_xml = apis.render_policy(current_app.config, environment)
    stage.progress(40, "compiling the policy and switching the gateway")
    row = apis.publish(stage.ctx.home, environment=environment, policy_xml=policy_xml,
                       actor=jobs.get(stage.job_id).requested_by, job_id=stage.job_id)
    url = f"{str(current_app.config['GATEWAY_URL']).rstrip('/')}/{row.path}"
    stage.log(f"published {row.api_name} revision {row.revision} at {url}/score")
    return {"api": row.api_name, "revision": row.revision, "environment": environment,
            "path": row.path, "url": url}


def _rotate_keys(ctx: JobContext) -> dict[str, Any]:
    """Rotate the backend keys of an environment's active slot without a 401 window."""
    from app.services import jobs, rollout

    check_params(ctx.params, ("environment",))
    env = _environment(ctx)
    config = pipeline_config()
    return rollout.rotate_keys(ctx.home, ctx, env, jobs.get(ctx.job_id).requested_by,
                               _settings(config.runtime.ready_timeout_seconds))
