"""Blue/green deploys and key rotation on the local backend, step by step and resumable.

Deploy: record a new slot (fresh keys, 0% traffic) → the runtime starts it → wait for every
replica and /health/ready → smoke-test it directly with its own key → switch the gateway's
backend URL and key in one atomic write → drain, then stop the old slot → set the MLflow alias.
A failure before the switch stops the new slot and leaves the old one serving. Each step is
keyed by the job id, so a redelivered job resumes its own slot instead of creating another.

The database's active slot is the truth for the gateway: a worker lost between the switch and
the activation leaves the gateway on a slot that is not active, so every resume that does not
switch again, every failed bring-up and every key rotation re-asserts the gateway's URL and
key together, in one write, from the active slot.

Key rotation never leaves the gateway holding a key the replicas refuse: regenerate the
secondary → point the gateway at it → regenerate the primary → point the gateway at it, each
new key checked directly against the slot before the gateway uses it, and each gateway change
given KEY_SWITCH_GRACE_SECONDS to be picked up before the key it replaced is dropped.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from app.backends.base import BackendError
from app.backends.local import deployment as local
from app.db import DeploymentState
from app.errors import AppError, ValidationError
from app.labels import plural
from app.services import audit, deployments
from app.services.audit import AuditAction
from app.services.jobs import JobCancelled
from app.serving.keys import generate_keys

FAULT_WAIT_SECONDS = 600.0


class Reporter(Protocol):
    """What a job gives the rollout: progress (may raise JobCancelled) and log lines."""

    job_id: str

    def progress(self, percent: int, step: str) -> None: ...

    def log(self, message: str, *, level: str = "INFO") -> None: ...

    def check_cancelled(self) -> None: ...


@dataclass(frozen=True)
class RolloutSettings:
    """Timings of a rollout (config: DEPLOY_DRAIN_SECONDS, KEY_SWITCH_GRACE_SECONDS)."""

    ready_timeout_seconds: float = 60.0
    drain_seconds: float = 30.0
    key_switch_grace_seconds: float = 2.0
    fault_at: str = ""  # a fault-injection point name (see fault_point); empty = none


@dataclass(frozen=True)
class DeployRequest:
    """A validated deploy: where, what, how big, and who asked."""

    environment: str
    model_name: str
    model_version: str
    replicas: int
    resources: dict[str, Any]
    requested_by: str
    rollback: bool = False


@contextmanager
def environment_lock(home: Path, environment: str) -> Iterator[None]:
    """Serialise deploys and rotations of one environment (workers of this host)."""
    path = Path(home) / "runtime" / "locks" / f"{environment}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- deploy


def deploy(home: Path, job: Reporter, request: DeployRequest, registry: Any,
           settings: RolloutSettings) -> dict[str, Any]:
    """Run (or resume) a blue/green deploy; return the job result.

    Raises:
        AppError: the new slot failed readiness or its smoke test (the old slot serves on).
    """
    env = request.environment
    with environment_lock(home, env):
        row = deployments.by_job(job.job_id)
        if row is None:
            job.progress(5, f"materialising {request.model_name} v{request.model_version}")
            try:
                local.materialise(home, registry, request.model_name, request.model_version)
            except Exception as exc:
                raise AppError(f"cannot materialise {request.model_name} "
                               f"v{request.model_version}: {exc}") from exc
            row = deployments.create_slot(
                home, environment=env, model_name=request.model_name,
                model_version=request.model_version, replicas=request.replicas,
                resources=request.resources, job_id=job.job_id)
            job.log(f"new {row.slot} slot {row.id} for {env} at 0% traffic "
                    f"({plural(row.replicas, 'replica')})")
        elif row.deployment_state in (DeploymentState.FAILED, DeploymentState.STOPPED) \
                and row.activated_at is None:
            # An earlier attempt may have switched the gateway to this slot before it died.
            reassert_gateway(home, env)
            raise AppError(f"slot {row.id} of this job already failed: {row.error}")
        else:
            job.log(f"resuming slot {row.id} ({row.state})")
            if row.state != DeploymentState.STARTING:
                # Switched already: whatever happened since, the gateway follows the active slot.
                reassert_gateway(home, env)
        if row.state == DeploymentState.STARTING:
            _bring_up_and_switch(home, job, row.id, settings)
        return _finish(home, job, row.id, request, registry, settings)


def _bring_up_and_switch(home: Path, job: Reporter, deployment_id: str,
                         settings: RolloutSettings) -> None:
    """Readiness, smoke test, then the atomic switch; on failure stop the new slot."""
    row = deployments.get(deployment_id)
    package = deployments.model_dir(home, row.model_name, row.model_version)
    try:
        job.progress(20, f"waiting for the {row.slot} slot to be ready")
        endpoint = local.wait_ready(home, row.id, row.replicas, settings.ready_timeout_seconds,
                                    job.check_cancelled)
        job.log(f"{row.slot} slot ready at {endpoint.url} ({plural(row.replicas, 'replica')})")
        job.progress(50, "smoke-testing the new slot with its own key")
        primary, _ = deployments.keys_of(home, row)
        result = local.smoke_test(endpoint.url, primary, local.read_signature(package))
        odds = ", ".join(f"P({k}) {v:.4f}" for k, v in sorted(result.probabilities.items()))
        job.log(f"smoke test passed: predicted {result.label} ({odds})")
    except (BackendError, JobCancelled) as exc:
        reason = "cancelled" if isinstance(exc, JobCancelled) else str(exc)
        deployments.stop([row.id], failed=reason)
        # A lost earlier attempt may have switched the gateway to this slot already.
        reassert_gateway(home, row.environment)
        current = deployments.active(row.environment)
        job.log(f"stopped the new slot; {row.environment} keeps serving "
                + (f"{current.slot} (v{current.model_version})" if current else "nothing"),
                level="WARNING")
        if isinstance(exc, JobCancelled):
            raise
        raise AppError(reason) from None
    job.progress(70, "switching traffic")
    local.point_gateway(home, row.environment, endpoint.url, primary)
    fault_point(home, settings.fault_at, "rollout.after-switch", job.job_id)
    replaced = deployments.activate(row.id)
    audit.record("modelgate", AuditAction.TRAFFIC_SWITCHED, f"environment:{row.environment}",
                 {"deployment": row.id, "slot": row.slot, "model_version": row.model_version,
                  "url": endpoint.url, "replaced": replaced, "job_id": job.job_id})
    job.log(f"traffic switched to the {row.slot} slot ({endpoint.url}); "
            f"draining {', '.join(replaced) or 'nothing'}")


def _finish(home: Path, job: Reporter, deployment_id: str, request: DeployRequest,
            registry: Any, settings: RolloutSettings) -> dict[str, Any]:
    """Drain and stop the replaced slots, set the MLflow alias, audit; idempotent."""
    row = deployments.get(deployment_id)
    old = deployments.draining(row.environment)
    if old:
        _progress_after_switch(job, 80, f"draining the old slot for {settings.drain_seconds:g} s")
        time.sleep(settings.drain_seconds)
        deployments.stop([r.id for r in old])
        job.log(f"stopped {', '.join(f'{r.slot} slot {r.id} (v{r.model_version})' for r in old)}")
    _progress_after_switch(job, 95, f"setting MLflow alias {row.environment} → "
                                    f"v{row.model_version}")
    try:
        registry.set_alias(row.model_name, row.environment, row.model_version)
    except Exception as exc:  # the deploy itself stands; the alias can be set again
        job.log(f"could not set the MLflow alias: {exc}", level="WARNING")
    action = AuditAction.ROLLED_BACK if request.rollback else AuditAction.DEPLOYED
    audit.record(request.requested_by, action, f"environment:{row.environment}",
                 {"deployment": row.id, "slot": row.slot, "model": row.model_name,
                  "model_version": row.model_version, "job_id": job.job_id})
    return {"environment": row.environment, "deployment_id": row.id, "slot": row.slot,
            "model": {"name": row.model_name, "version": row.model_version},
            "url": deployments.url_of(row.port), "replicas": row.replicas,
            "replaced": [{"deployment_id": r.id, "slot": r.slot, "version": r.model_version}
                         for r in old], "rollback": request.rollback}


def _progress_after_switch(job: Reporter, percent: int, step: str) -> None:
    """Report progress once traffic has switched: too late to cancel, so finish the cleanup."""
    try:
        job.progress(percent, step)
    except JobCancelled:
        job.log("cancellation ignored: traffic already switched; finishing the cleanup",
                level="WARNING")


def reassert_gateway(home: Path, environment: str) -> None:
    """Point the gateway at the active slot's URL and primary key in one write (if any)."""
    row = deployments.active_row(environment)
    if row is None:
        return
    primary, _ = deployments.keys_of(home, row)
    local.point_gateway(home, environment, deployments.url_of(row.port), primary)


def fault_point(home: Path, armed: str, name: str, job_id: str) -> None:
    """A fault-injection point for crash tests; inert unless MODELGATE_FAULT_AT names it.

    Armed, the first attempt of a job to reach it writes run/fault.<name>.<job id> (holding
    this process's pid) and waits there, so a test can kill the worker at exactly this step;
    a later attempt of the same job goes on.
    """
    if armed != name:
        return
    marker = Path(home) / "run" / f"fault.{name}.{job_id}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    time.sleep(FAULT_WAIT_SECONDS)


# --------------------------------------------------------------------------- keys


def rotate_keys(home: Path, job: Reporter, environment: str, actor: str,
                settings: RolloutSettings) -> dict[str, Any]:
    """Rotate the active slot's keys with no window in which the gateway's key is refused."""
    with environment_lock(home, environment):
        row = deployments.active_row(environment)
        if row is None:
            raise ValidationError(f"{environment} has no active deployment to rotate keys of",
                                  errors=[{"field": "params.environment",
                                           "message": "no active deployment"}])
        url = deployments.url_of(row.port)
        signature = local.read_signature(
            deployments.model_dir(home, row.model_name, row.model_version))
        grace = settings.key_switch_grace_seconds
        try:
            primary, secondary = deployments.keys_of(home, row)
            # Re-sync first: after an interrupted rotation or deploy the database is the truth,
            # for the URL (a deploy lost after its switch) as for the key.
            job.progress(5, "re-syncing the keys file and the gateway to the active slot")
            deployments.store_keys(home, row.id, primary, secondary)
            local.point_gateway(home, environment, url, primary)
            time.sleep(grace)

            job.progress(20, "regenerating the secondary key")
            old_secondary, secondary = secondary, generate_keys()[1]
            deployments.store_keys(home, row.id, primary, secondary)
            local.check_key(url, secondary, signature, 200)
            local.check_key(url, old_secondary, signature, 401)
            job.progress(40, "pointing the gateway at the secondary key")
            local.point_gateway(home, environment, url, secondary)
            time.sleep(grace)

            job.progress(60, "regenerating the primary key")
            old_primary, primary = primary, generate_keys()[0]
            deployments.store_keys(home, row.id, primary, secondary)
            local.check_key(url, primary, signature, 200)
            local.check_key(url, old_primary, signature, 401)
            job.progress(80, "pointing the gateway at the primary key")
            local.point_gateway(home, environment, url, primary)
            time.sleep(grace)
        except BackendError as exc:
            raise AppError(f"key rotation of {environment} stopped: {exc}") from None
        deployments.record_rotation(row.id, job.job_id)
        audit.record(actor, AuditAction.KEYS_ROTATED, f"environment:{environment}",
                     {"deployment": row.id, "slot": row.slot, "job_id": job.job_id,
                      "order": "secondary, gateway, primary, gateway"})
        job.log(f"rotated both keys of the {row.slot} slot {row.id}; the old ones are refused")
        return {"environment": environment, "deployment_id": row.id, "slot": row.slot,
                "rotated": ["secondary", "primary"]}
