"""The provision job: create (or tear down) the workspace on the configured backend, and record
its environments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.backends.base import Backend, BackendError, ProvisionSpec, TransientBackendError
from app.errors import AppError
from app.pipeline_config import PipelineConfig
from app.services import environments
from app.services.backend import backend
from app.services.models import pipeline
from app.services.operations import JobOperationStore
from app.services.rollout import Reporter


def run_provision(job: Reporter, params: Mapping[str, Any]) -> dict[str, Any]:
    """Provision idempotently and report what already existed and what was created.

    Raises:
        TransientBackendError: worth retrying (the job is queued again).
        AppError: the backend refused.
    """
    config = pipeline()
    job.log(f"pipeline configuration: {config.source}")
    workspace = config.workspace.name
    target = backend()
    try:
        if params.get("teardown", False):
            return _teardown(job, target, workspace)
        # Long operations keep their continuation tokens on the job: a retried attempt
        # resumes polling them (API Management takes 30-75 minutes to create).
        operations = JobOperationStore(job.job_id)
        under_way = [key for key in operations.keys() if "#" not in key]
        if under_way:
            job.log(f"resuming operations already under way: {', '.join(under_way)}")
        spec = ProvisionSpec(workspace=workspace, environments=config.environment_names,
                             settings=config.to_dict(), operations=operations)
        result = target.provision(spec, job.progress)
    except TransientBackendError:
        raise
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
            job.log(f"{verb}: {item}")
    job.log(f"workspace {workspace} on the {target.name} backend: {len(created)} created, "
            f"{len(existing)} already existed, {len(updated)} updated")
    return {"workspace": workspace, "backend": target.name, "config": config.source,
            "created": created, "existing": existing, "updated": updated,
            "environments": sizes,
            "details": {k: v for k, v in result.details.items() if k != "updated"}}


def _sizes(config: PipelineConfig, name: str) -> dict[str, Any]:
    env = config.environment(name)
    return {"replicas": env.replicas, "cpu": env.cpu, "memory_mb": env.memory_mb}


def _teardown(job: Reporter, target: Backend, workspace: str) -> dict[str, Any]:
    """Remove the workspace; the backend's steps are logged and returned."""
    steps: list[str] = []

    def progress(percent: int, step: str) -> None:
        steps.append(step)
        job.progress(percent, step)  # also the job's log line

    target.teardown(workspace, progress)
    removed = environments.remove(workspace)
    for name in removed:
        job.log(f"removed environment:{name}")
    return {"workspace": workspace, "backend": target.name, "teardown": True,
            "steps": steps, "removed_environments": list(removed)}
