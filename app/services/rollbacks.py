"""One-click rollback: return an environment to an earlier deployed version (a deploy job)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.auth.roles import Role, has_role
from app.db import Job
from app.errors import Forbidden, ValidationError
from app.services import audit, notifications, promotions, protected
from app.services.audit import AuditAction


@dataclass(frozen=True)
class RollbackTarget:
    """A version that once served the environment, and when it last started serving."""

    model_version: str
    deployment_id: str
    activated_at: str | None
    is_current: bool


def targets(environment: str, limit: int = 20) -> list[RollbackTarget]:
    """Versions that served the environment, newest first, one entry per version."""
    from app.services import deployments

    current = deployments.active_row(environment)
    seen: set[str] = set()
    out: list[RollbackTarget] = []
    for row in deployments.history(environment, limit=100):
        if row.activated_at is None or row.model_version in seen:
            continue
        seen.add(row.model_version)
        out.append(RollbackTarget(row.model_version, row.id, row.activated_at.isoformat(),
                                  current is not None and row.id == current.id))
        if len(out) >= limit:
            break
    return out


def rollback(environment: str, version: Any, reason: Any, actor: str, *,
             roles: frozenset[str]) -> Job:
    """Queue a deploy job that returns `environment` to `version` (default: the previous one).

    Raises:
        Forbidden: the caller is neither MLOps.Engineer nor MLOps.Admin.
        ValidationError: no reason, the version serves now, or (unprotected environment) it
            never served the environment.
        ProtectedEnvironment: the environment is protected and the version never served it.
        ServiceUnavailable: the job queue is down.
    """
    from app.services import deployments, jobs
    from app.services.kinds import JobKind

    if not has_role(roles, Role.ENGINEER):
        raise Forbidden(f"rolling back needs the {Role.ENGINEER.value} role")
    reason = promotions.check_reason(reason, ask="say why you roll back")
    current = deployments.active_row(environment)
    earlier = [t for t in targets(environment, limit=100) if not t.is_current]
    if version in (None, ""):
        if not earlier:
            raise ValidationError(f"{environment} has no earlier deployed version to return to")
        version = earlier[0].model_version
    version = str(version)
    if version not in {t.model_version for t in earlier}:
        if current is not None and current.model_version == version:
            raise ValidationError(f"version: {environment} serves v{version} now",
                                  errors=[{"field": "version", "message": "serves it now"}])
        if protected.is_protected(environment):
            # Break-glass restores an approved state; a version that never served prod is a
            # promotion, with four eyes.
            raise protected.ProtectedEnvironment(
                environment, f"a rollback to v{version}, which never served {environment} "
                             "(a deploy like any other),")
        raise ValidationError(f"version: v{version} never served {environment} before",
                              errors=[{"field": "version", "message": "not an earlier version"}])
    details = {"environment": environment, "model_version": version,
               "from_version": current.model_version if current else None,
               "reason": reason, "phase": "queued"}

    def link(job: Job) -> None:
        # The audit record is the break-glass grant the worker checks, so it comes first.
        details["deploy_job_id"] = job.id
        audit.record(actor, AuditAction.ROLLED_BACK, f"environment:{environment}", details)

    # An explicit version, not the deploy job's `rollback` flag: the person chose this version,
    # and the job must deploy it even if another deploy changes "previous" meanwhile.
    job = jobs.submit_granted(JobKind.DEPLOY, {"environment": environment, "version": version},
                              actor, link)
    notifications.notify(AuditAction.ROLLED_BACK.value, {**details, "rolled_back_by": actor})
    return job


def recent(limit: int = 10) -> list[dict[str, Any]]:
    """The latest break-glass rollbacks, newest first (for the approvers' inbox)."""
    return [{"actor": e.actor, "time": e.time, "environment": (e.details or {}).get("environment"),
             "model_version": (e.details or {}).get("model_version"),
             "from_version": (e.details or {}).get("from_version"),
             "reason": (e.details or {}).get("reason"),
             "deploy_job_id": (e.details or {}).get("deploy_job_id")}
            for e in audit.events(action=AuditAction.ROLLED_BACK.value, limit=limit)]
