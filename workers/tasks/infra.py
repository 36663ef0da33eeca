"""The provision job: create (or tear down) the workspace on the configured backend."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from app.pipeline_config import PipelineConfig
from workers.tasks._pipeline import check_params, pipeline_config
from workers.tasks._runner import JobContext, TransientJobError, run_job


@shared_task(bind=True, name="modelgate.infra.provision", soft_time_limit=900, time_limit=960)
def provision(self: Any, job_id: str) -> None:
    """Run a provision job (params: ``teardown`` true removes the workspace instead)."""
    run_job(self, job_id, _provision)


def _provision(ctx: JobContext) -> dict[str, Any]:
    """Provision idempotently and report what already existed and what was created."""
    from flask import current_app

    from app.backends import get_backend
    from app.backends.base import BackendError, ProvisionSpec, TransientBackendError
    from app.errors import AppError, ValidationError
    from app.services import environments

    check_params(ctx.params, ("teardown",))
    teardown = ctx.params.get("teardown", False)
    if not isinstance(teardown, bool):
        raise ValidationError("params.teardown: must be true or false",
                              errors=[{"field": "params.teardown", "message": "not a boolean"}])
    config = pipeline_config()
    ctx.log(f"pipeline configuration: {config.source}")
    workspace = config.workspace.name
    try:
        backend = get_backend(current_app.config)
        if teardown:
            return _teardown(ctx, backend, workspace)
        spec = ProvisionSpec(workspace=workspace, environments=config.environment_names,
                             settings=config.to_dict())
        result = backend.provision(spec, ctx.progress)
    except TransientBackendError as exc:
        raise TransientJobError(str(exc)) from exc
    except BackendError as exc:
        raise AppError(str(exc)) from exc
    sizes = {name: _sizes(config, name) for name in config.environment_names}
    envs = environments.ensure(workspace, sizes)
    created = [*result.created, *(f"environment:{n}" for n in envs.created)]
    existing = [*result.existing, *(f"environment:{n}" for n in envs.existing)]
    updated = [*result.details.get("updated", []), *(f"environment:{n}" for n in envs.updated)]
    for verb, items in (("created", created), ("already existed", existing),
                        ("updated", updated)):
        for item in items:
            ctx.log(f"{verb}: {item}")
    ctx.log(f"workspace {workspace} on the {backend.name} backend: {len(created)} created, "
            f"{len(existing)} already existed, {len(updated)} updated")
    return {"workspace": workspace, "backend": backend.name, "config": config.source,
            "created": created, "existing": existing, "updated": updated,
            "environments": sizes,
            "details": {k: v for k, v in result.details.items() if k != "updated"}}


def _sizes(config: PipelineConfig, name: str) -> dict[str, Any]:
    env = config.environment(name)
    return {"replicas": env.replicas, "cpu": env.cpu, "memory_mb": env.memory_mb}


def _teardown(ctx: JobContext, backend: Any, workspace: str) -> dict[str, Any]:
    """Remove the workspace; the backend's steps are logged and returned."""
    from app.services import environments

    steps: list[str] = []

    def progress(percent: int, step: str) -> None:
        steps.append(step)
        ctx.progress(percent, step)  # also the job's log line

    backend.teardown(workspace, progress)
    removed = environments.remove(workspace)
    for name in removed:
        ctx.log(f"removed environment:{name}")
    return {"workspace": workspace, "backend": backend.name, "teardown": True,
            "steps": steps, "removed_environments": list(removed)}
