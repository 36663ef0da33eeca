"""Blue/green deploys and key rotation on the configured backend, step by step and resumable.

Deploy: the backend creates a new slot (fresh keys, 0% traffic) and it is recorded → wait for
every replica to be ready → smoke-test it directly with its own key → switch the traffic (the
backend URL and key together, atomically) → drain, then retire the old slot → set the MLflow
alias.
A failure before the switch stops the new slot and leaves the old one serving. Each step is
keyed by the job id, so a redelivered job resumes its own slot instead of creating another.

The database's active slot is the truth for the gateway: a worker lost between the switch and
the activation leaves the gateway on a slot that is not active, so every resume that does not
switch again, every failed bring-up and every key rotation re-asserts the gateway's URL and
key together (``switch_traffic`` to the active slot, one atomic change).

Key rotation never leaves the gateway holding a key the replicas refuse: regenerate the
secondary → point the gateway at it → regenerate the primary → point the gateway at it, each
new key checked directly against the slot before the gateway uses it, and each gateway change
given KEY_SWITCH_GRACE_SECONDS to be picked up before the key it replaced is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from flask import current_app

from app.backends.base import (
    Backend,
    BackendError,
    Capability,
    CapabilityNotSupported,
    KeyRole,
    SlotRef,
    SlotSpec,
    require,
)
from app.db import Deployment, DeploymentState
from app.errors import AppError, ValidationError
from app.labels import plural
from app.services import apis, audit, deployments, faults, jobs, models, protected
from app.services.audit import AuditAction
from app.services.backend import backend, ready_timeout_seconds, slot_ref
from app.services.jobs import JobCancelled
from app.services.kinds import JobKind
from app.services.models import pipeline
from app.services.params import environment as check_environment


class Reporter(Protocol):
    """What a job gives a service: progress (may raise JobCancelled) and log lines."""

    job_id: str

    def progress(self, percent: int, step: str) -> None: ...

    def log(self, message: str, *, level: str = "INFO") -> None: ...

    def check_cancelled(self) -> None: ...


@dataclass(frozen=True)
class RolloutSettings:
    """Timings of a rollout (config: DEPLOY_DRAIN_SECONDS, KEY_SWITCH_GRACE_SECONDS; the
    readiness wait from the pipeline file, per backend: backend.ready_timeout_seconds)."""

    ready_timeout_seconds: float = 60.0
    drain_seconds: float = 30.0
    key_switch_grace_seconds: float = 2.0
    fault_at: str = ""  # a fault-injection point name (app/services/faults.py); empty = none


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


# --------------------------------------------------------------------------- jobs


def settings() -> RolloutSettings:
    """Timings from the app config and the pipeline file."""
    config = current_app.config
    return RolloutSettings(
        ready_timeout_seconds=ready_timeout_seconds(),
        drain_seconds=float(config["DEPLOY_DRAIN_SECONDS"]),
        key_switch_grace_seconds=float(config["KEY_SWITCH_GRACE_SECONDS"]),
        fault_at=str(config["FAULT_AT"]))


@dataclass
class Stage:
    """One stage of a staged job: its progress mapped into [start, start + span] percent."""

    job: Reporter
    start: int
    span: int
    label: str

    @property
    def job_id(self) -> str:
        return self.job.job_id

    def progress(self, percent: int, step: str) -> None:
        self.job.progress(self.start + percent * self.span // 100, f"{self.label}: {step}")

    def log(self, message: str, *, level: str = "INFO") -> None:
        self.job.log(message, level=level)

    def check_cancelled(self) -> None:
        self.job.check_cancelled()


def run_deploy(job: Reporter, params: Mapping[str, Any]) -> dict[str, Any]:
    """The deploy job: a registered version (default: the latest) to an environment.

    ``params`` were checked at submit (KindSpec); what exists is checked here. In a protected
    environment the job runs only under its grant (an approved promotion or a break-glass
    rollback), and when the environment has no current API revision it goes on to publish the
    default policy, so an approved promotion ends with the environment answering.
    """
    from app.ml.registry import RegistryError

    env = str(params.get("environment", "staging"))
    config = pipeline()  # a broken pipeline file fails the job here, naming its bad key
    check_environment("params.environment", env)
    grant = protected.authorize_run(job.job_id, JobKind.DEPLOY, env)
    publish_after = grant is not None and apis.current(apis.api_name(env)) is None
    if grant is not None:
        job.log(f"{env} is protected; running under {grant.describe()}")
    registry = models.registry()
    name = config.model.name
    rollback = bool(params.get("rollback", False))
    version = params.get("version")
    own = deployments.by_job(job.job_id)
    if own is not None:  # a redelivery resumes the slot it created, whatever "latest" is now
        version, name = own.model_version, own.model_name
    elif rollback:
        prev = deployments.previous(env)
        if prev is None:
            raise ValidationError(f"{env} has no previous deployment to roll back to")
        version, name = prev.model_version, prev.model_name
        job.log(f"rolling back {env} to v{version} (slot {prev.id})")
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
    request = DeployRequest(
        environment=env, model_name=name, model_version=str(version), replicas=size.replicas,
        resources={"cpu": size.cpu, "memory_mb": size.memory_mb},
        requested_by=jobs.get(job.job_id).requested_by, rollback=rollback)
    total = 2 if publish_after else 1
    job.log(f"stage 1/{total}: deploying {name} v{version} to {env} blue/green "
            f"({plural(size.replicas, 'replica')})")
    stage = Stage(job, 0, 80 if publish_after else 100, f"deploy (1/{total})")
    result = deploy(stage, request, registry, settings())
    if publish_after:
        job.log(f"stage 2/2: {env} has no API yet; publishing the default policy")
        result["published"] = apis.publish_default(Stage(job, 80, 20, "publish (2/2)"), env)
    return result


def run_rotate_keys(job: Reporter, params: Mapping[str, Any]) -> dict[str, Any]:
    """The rotate-keys job: both keys of an environment's active slot, no 401 window."""
    check_environment("params.environment", params.get("environment", "staging"))
    return rotate_keys(job, str(params.get("environment", "staging")),
                       jobs.get(job.job_id).requested_by, settings())


# --------------------------------------------------------------------------- deploy


def deploy(job: Reporter, request: DeployRequest, registry: Any,
           settings: RolloutSettings) -> dict[str, Any]:
    """Run (or resume) a blue/green deploy; return the job result.

    Raises:
        AppError: the new slot failed readiness or its smoke test (the old slot serves on).
    """
    env = request.environment
    target = backend()
    _require(target, Capability.BLUE_GREEN)
    with target.environment_lock(env):
        row = deployments.by_job(job.job_id)
        if row is None:
            row = _create(target, job, request)
        elif row.deployment_state in (DeploymentState.FAILED, DeploymentState.STOPPED) \
                and row.activated_at is None:
            # An earlier attempt may have switched the gateway to this slot before it died.
            reassert_gateway(target, env)
            raise AppError(f"slot {row.id} of this job already failed: {row.error}")
        else:
            job.log(f"resuming slot {row.id} ({row.state})")
            if row.state != DeploymentState.STARTING:
                # Switched already: whatever happened since, the gateway follows the active slot.
                reassert_gateway(target, env)
        if row.state == DeploymentState.STARTING:
            _bring_up_and_switch(target, job, row.id, settings)
        return _finish(target, job, row.id, request, registry, settings)


def _create(target: Backend, job: Reporter, request: DeployRequest) -> Deployment:
    """Have the backend create the slot at 0% traffic, then record it."""
    slot_id, colour = deployments.new_slot(request.environment)
    ref = SlotRef(slot_id, request.environment, request.environment, colour,
                  request.model_name, request.model_version)
    try:
        info = target.create_slot(SlotSpec(ref, request.replicas, dict(request.resources)),
                                  job.progress)
    except BackendError as exc:
        raise AppError(str(exc)) from None
    row = deployments.create_slot(
        environment=request.environment, model_name=request.model_name,
        model_version=request.model_version, replicas=request.replicas,
        resources=request.resources, job_id=job.job_id, slot_id=slot_id, slot=colour,
        info=info)
    job.log(f"new {row.slot} slot {row.id} for {request.environment} at 0% traffic "
            f"({plural(row.replicas, 'replica')}) on the {info.backend} backend")
    return row


def _bring_up_and_switch(target: Backend, job: Reporter, deployment_id: str,
                         settings: RolloutSettings) -> None:
    """Readiness, smoke test, then the atomic switch; on failure retire the new slot."""
    row = deployments.get(deployment_id)
    ref = slot_ref(row)
    try:
        job.progress(20, f"waiting for the {row.slot} slot to be ready")
        info = target.wait_ready(ref, row.replicas, settings.ready_timeout_seconds,
                                 job.check_cancelled)
        deployments.record_ready(row.id, info)
        job.log(f"{row.slot} slot ready at {info.base_url} ({plural(row.replicas, 'replica')})")
        job.progress(50, "smoke-testing the new slot with its own key")
        result = target.smoke_test(ref, target.slot_keys(ref).primary)
        odds = ", ".join(f"P({k}) {v:.4f}" for k, v in sorted(result.probabilities.items()))
        job.log(f"smoke test passed: predicted {result.label} ({odds})")
    except (BackendError, JobCancelled) as exc:
        reason = "cancelled" if isinstance(exc, JobCancelled) else str(exc)
        deployments.stop([row.id], failed=reason)
        # A lost earlier attempt may have switched the gateway to this slot already.
        try:
            reassert_gateway(target, row.environment)
        except AppError as reassert:
            job.log(reassert.message, level="WARNING")
        _retire(target, job, [ref])
        current = deployments.active(row.environment)
        job.log(f"stopped the new slot; {row.environment} keeps serving "
                + (f"{current.slot} (v{current.model_version})" if current else "nothing"),
                level="WARNING")
        if isinstance(exc, JobCancelled):
            raise
        raise AppError(reason) from None
    job.progress(70, "switching traffic")
    try:
        target.switch_traffic(row.environment, ref)
    except BackendError as exc:
        raise AppError(f"switching traffic to the {row.slot} slot failed: {exc}") from None
    faults.fault_point(settings.fault_at, "rollout.after-switch", job.job_id)
    replaced = deployments.activate(row.id)
    audit.record("modelgate", AuditAction.TRAFFIC_SWITCHED, f"environment:{row.environment}",
                 {"deployment": row.id, "slot": row.slot, "model_version": row.model_version,
                  "url": info.base_url, "replaced": replaced, "job_id": job.job_id})
    job.log(f"traffic switched to the {row.slot} slot ({info.base_url}); "
            f"draining {', '.join(replaced) or 'nothing'}")


def reassert_gateway(target: Backend, environment: str) -> None:
    """Point the gateway at the active slot's URL and primary key in one change (if any).

    Raises:
        AppError: the backend could not (the gateway may still point elsewhere).
    """
    row = deployments.active_row(environment)
    if row is None:
        return
    try:
        target.switch_traffic(environment, slot_ref(row))
    except BackendError as exc:
        raise AppError(f"could not point the gateway back at the active {row.slot} slot of "
                       f"{environment}: {exc}") from None


def _retire(target: Backend, job: Reporter, refs: list[SlotRef]) -> None:
    """Retire slots on the backend; a failure is logged (the rows are stopped already)."""
    for ref in refs:
        try:
            target.retire_slot(ref)
        except BackendError as exc:
            job.log(f"could not retire slot {ref.id}: {exc}", level="WARNING")


def _finish(target: Backend, job: Reporter, deployment_id: str, request: DeployRequest,
            registry: Any, settings: RolloutSettings) -> dict[str, Any]:
    """Drain and stop the replaced slots, set the MLflow alias, audit; idempotent."""
    row = deployments.get(deployment_id)
    old = deployments.draining(row.environment)
    if old:
        _progress_after_switch(job, 80, f"draining the old slot for {settings.drain_seconds:g} s")
        time.sleep(settings.drain_seconds)
        deployments.stop([r.id for r in old])
        _retire(target, job, [slot_ref(r) for r in old])
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
            "url": deployments.base_url(row), "replicas": row.replicas,
            "replaced": [{"deployment_id": r.id, "slot": r.slot, "version": r.model_version}
                         for r in old], "rollback": request.rollback}


def _progress_after_switch(job: Reporter, percent: int, step: str) -> None:
    """Report progress once traffic has switched: too late to cancel, so finish the cleanup."""
    try:
        job.progress(percent, step)
    except JobCancelled:
        job.log("cancellation ignored: traffic already switched; finishing the cleanup",
                level="WARNING")


# --------------------------------------------------------------------------- keys


def rotate_keys(job: Reporter, environment: str, actor: str,
                settings: RolloutSettings) -> dict[str, Any]:
    """Rotate the active slot's keys with no window in which the gateway's key is refused."""
    target = backend()
    _require(target, Capability.KEY_ROTATION)
    with target.environment_lock(environment):
        row = deployments.active_row(environment)
        if row is None:
            raise ValidationError(f"{environment} has no active deployment to rotate keys of",
                                  errors=[{"field": "params.environment",
                                           "message": "no active deployment"}])
        ref = slot_ref(row)
        grace = settings.key_switch_grace_seconds
        try:
            # Re-sync first: after an interrupted rotation or deploy the active slot is the
            # truth, for the URL (a deploy lost after its switch) as for the key.
            job.progress(5, "re-syncing the slot and the gateway to the active slot")
            target.sync_keys(ref)
            target.switch_traffic(environment, ref)
            time.sleep(grace)
            for percent, which in ((20, KeyRole.SECONDARY), (60, KeyRole.PRIMARY)):
                job.progress(percent, f"regenerating the {which} key")
                old = getattr(target.slot_keys(ref), which.value)
                fresh = target.regenerate_key(ref, which)
                _expect(target.check_key(ref, fresh), f"the new {which} key")
                _expect(not target.check_key(ref, old), f"the old {which} key",
                         refused=True)
                job.progress(percent + 20, f"pointing the gateway at the {which} key")
                target.gateway_use_key(environment, fresh)
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


def _require(target: Backend, capability: Capability) -> None:
    try:
        require(target, capability)
    except CapabilityNotSupported as exc:
        raise AppError(str(exc)) from None


def _expect(ok: bool, what: str, *, refused: bool = False) -> None:
    if not ok:
        raise BackendError(f"key check: {what} is {'still accepted' if refused else 'refused'}"
                           " by the slot")
