"""Deployments: the record of each environment's blue/green slots on the backend, and views.

A row describes a slot on any backend: the backend's name, the endpoint and slot names and the
scoring URI it reported. The keys stay with the backend (``Backend.slot_keys``); rows never
hold a plaintext key. The local backend also treats STARTING/ACTIVE/DRAINING rows as the
desired state its runtime keeps running.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from app.backends.base import ResourceNotFound, SlotInfo, SlotKeys, SlotsReport
from app.db import Deployment, DeploymentState, new_id, utcnow
from app.errors import NotFound
from app.extensions import db
from app.services import audit, protected
from app.services.audit import AuditAction
from app.services.backend import backend, environment_names, slot_ref

SLOTS: tuple[str, str] = ("blue", "green")


@dataclass(frozen=True)
class ActiveDeployment:
    """The slot that takes an environment's traffic (the seam with the publish job)."""

    id: str
    environment: str
    slot: str
    url: str
    model_name: str
    model_version: str
    replicas: int
    activated_at: dt.datetime | None
    keys_rotated_at: dt.datetime


def base_url(row: Deployment) -> str:
    """The slot's URL without its ``/score`` operation ('' until the backend reported it)."""
    return (row.scoring_uri or "").removesuffix("/score")


# --------------------------------------------------------------------------- reading


def get(deployment_id: str) -> Deployment:
    """Return a deployment, or raise NotFound."""
    found = db.session.get(Deployment, deployment_id)
    if found is None:
        raise NotFound(f"deployment {deployment_id!r} does not exist")
    db.session.refresh(found)
    return found


def by_job(job_id: str) -> Deployment | None:
    """The deployment a deploy job created, if any (redelivery resumes it)."""
    return db.session.scalar(select(Deployment).where(Deployment.job_id == job_id))


def active_row(environment: str) -> Deployment | None:
    """The ACTIVE row of an environment."""
    return db.session.scalar(
        select(Deployment).where(Deployment.environment == environment,
                                 Deployment.state == DeploymentState.ACTIVE)
        .order_by(Deployment.activated_at.desc()))


def active(environment: str) -> ActiveDeployment | None:
    """The slot serving an environment, or None when nothing is deployed there."""
    row = active_row(environment)
    if row is None:
        return None
    return ActiveDeployment(row.id, row.environment, row.slot, base_url(row), row.model_name,
                            row.model_version, row.replicas, row.activated_at,
                            row.keys_rotated_at)


def of_model(model_name: str) -> dict[str, list[Deployment]]:
    """Every slot that ran or runs a version of the model, by version, newest first (lineage).

    One query for all versions, so a page listing fifty versions does not make fifty.
    """
    query = (select(Deployment).where(Deployment.model_name == model_name)
             .order_by(Deployment.created_at.desc()))
    by_version: dict[str, list[Deployment]] = {}
    for row in db.session.scalars(query):
        by_version.setdefault(row.model_version, []).append(row)
    return by_version


def history(environment: str, limit: int = 20) -> list[Deployment]:
    """An environment's deployments, newest first."""
    return list(db.session.scalars(
        select(Deployment).where(Deployment.environment == environment)
        .order_by(Deployment.created_at.desc()).limit(limit)))


def previous(environment: str) -> Deployment | None:
    """The most recently replaced slot that once served (what a rollback returns to)."""
    current = active_row(environment)
    rows = db.session.scalars(
        select(Deployment).where(Deployment.environment == environment,
                                 Deployment.activated_at.is_not(None))
        .order_by(Deployment.activated_at.desc()))
    return next((r for r in rows if current is None or r.id != current.id), None)


def running_in(environment: str) -> list[Deployment]:
    """Rows of an environment the runtime keeps running."""
    return list(db.session.scalars(select(Deployment).where(
        Deployment.environment == environment,
        Deployment.state.in_([s.value for s in DeploymentState if s.should_run]))))


def rotation_due(max_age: dt.timedelta) -> list[str]:
    """Environments whose active keys are older than max_age."""
    cutoff = utcnow() - max_age
    rows = db.session.scalars(select(Deployment).where(
        Deployment.state == DeploymentState.ACTIVE, Deployment.keys_rotated_at < cutoff))
    return sorted({r.environment for r in rows})


def environments() -> list[str]:
    """The configured environments in their order, then others that once had a deployment."""
    configured = environment_names()
    names = set(db.session.scalars(select(Deployment.environment).distinct()))
    return [*configured, *sorted(names - set(configured))]


# --------------------------------------------------------------------------- writing


def new_slot(environment: str) -> tuple[str, str]:
    """An id and the colour for a new slot of an environment (the other than the active one)."""
    current = active_row(environment)
    return new_id(), SLOTS[1] if current is not None and current.slot == SLOTS[0] else SLOTS[0]


def create_slot(*, environment: str, model_name: str, model_version: str, replicas: int,
                resources: dict[str, Any], job_id: str, slot_id: str | None = None,
                slot: str | None = None, info: SlotInfo | None = None) -> Deployment:
    """Record a new STARTING slot at 0% traffic (after the backend created it)."""
    if slot_id is None or slot is None:
        slot_id, slot = new_slot(environment)
    row = Deployment(id=slot_id, environment=environment, slot=slot, model_name=model_name,
                     model_version=str(model_version), replicas=replicas,
                     resources=dict(resources), state=DeploymentState.STARTING, traffic=0,
                     job_id=job_id, backend=info.backend if info else "local",
                     endpoint=info.ref.endpoint if info else environment,
                     scoring_uri=info.scoring_uri or None if info else None)
    db.session.add(row)
    db.session.commit()
    return row


def record_ready(deployment_id: str, info: SlotInfo) -> None:
    """Record the scoring URI the backend reported once the slot was ready."""
    db.session.execute(update(Deployment).where(Deployment.id == deployment_id).values(
        scoring_uri=info.scoring_uri or None, updated_at=utcnow()))
    db.session.commit()


def activate(deployment_id: str) -> list[str]:
    """Make a slot ACTIVE with 100% traffic; the former active slots start DRAINING."""
    now = utcnow()
    row = get(deployment_id)
    replaced = [r.id for r in running_in(row.environment)
                if r.id != deployment_id and r.state == DeploymentState.ACTIVE]
    db.session.execute(update(Deployment).where(Deployment.id.in_(replaced)).values(
        state=DeploymentState.DRAINING, traffic=0, updated_at=now))
    db.session.execute(update(Deployment).where(Deployment.id == deployment_id).values(
        state=DeploymentState.ACTIVE, traffic=100, activated_at=now, updated_at=now,
        error=None))
    db.session.commit()
    return replaced


def draining(environment: str) -> list[Deployment]:
    """Slots of an environment that wait to be stopped."""
    return [r for r in running_in(environment) if r.state == DeploymentState.DRAINING]


def stop(deployment_ids: list[str], *, failed: str | None = None) -> None:
    """Stop slots (the runtime SIGTERMs their replicas); with `failed`, record why."""
    if not deployment_ids:
        return
    now = utcnow()
    values: dict[str, Any] = {"state": DeploymentState.FAILED if failed else
                              DeploymentState.STOPPED, "traffic": 0, "stopped_at": now,
                              "updated_at": now}
    if failed:
        values["error"] = failed[:2000]
    db.session.execute(update(Deployment).where(Deployment.id.in_(deployment_ids))
                       .values(**values))
    db.session.commit()


def record_rotation(deployment_id: str, job_id: str | None) -> None:
    """Record that a slot's keys were rotated now (by a job)."""
    db.session.execute(update(Deployment).where(Deployment.id == deployment_id).values(
        keys_rotated_at=utcnow(), rotation_job_id=job_id, updated_at=utcnow()))
    db.session.commit()


def reveal_keys(environment: str, actor: str) -> tuple[Deployment, SlotKeys]:
    """The active slot's keys for an admin, audited (callers render them once, never cache).

    Raises:
        NotFound: nothing is deployed to the environment, or the backend holds no keys.
    """
    row = active_row(environment)
    if row is None:
        raise NotFound(f"{environment} has no active deployment")
    try:
        keys = backend().slot_keys(slot_ref(row))
    except ResourceNotFound as exc:
        raise NotFound(str(exc)) from None
    audit.record(actor, AuditAction.KEY_REVEALED, f"environment:{environment}",
                 {"deployment": row.id, "slot": row.slot})
    return row, keys


DEFAULT_IMAGE = "modelgate-scoring:latest"


def k8s_manifests(environment: str, image: str = DEFAULT_IMAGE) -> str:
    """The active slot of an environment as Kubernetes manifests (YAML): Deployment, Service,
    NetworkPolicy, autoscaler and a Secret with the key digests (never the keys).

    Raises:
        NotFound: nothing is deployed to the environment.
    """
    from app.backends.k8s import K8sSlotSpec, render_manifests, to_yaml
    from app.serving.keys import key_digest

    row = active_row(environment)
    if row is None:
        raise NotFound(f"{environment} has no active deployment to render")
    try:
        keys = backend().slot_keys(slot_ref(row))
    except ResourceNotFound as exc:
        raise NotFound(str(exc)) from None
    spec = K8sSlotSpec.from_deployment(row, image=image,
                                       primary_sha256=key_digest(keys.primary),
                                       secondary_sha256=key_digest(keys.secondary))
    return to_yaml(render_manifests(spec))


# --------------------------------------------------------------------------- views


def health(row: Deployment, report: SlotsReport) -> dict[str, Any]:
    """Replica health of a slot from the backend's report."""
    counts = report.slots.get(row.id)
    if not row.deployment_state.should_run:
        return {"state": "stopped", "ready": 0, "replicas": row.replicas, "restarts": 0}
    if not report.reporting or counts is None:
        return {"state": "unknown", "ready": 0, "replicas": row.replicas, "restarts": 0}
    return {"state": "healthy" if counts.ready >= row.replicas else
            ("degraded" if counts.ready else "down"), "ready": counts.ready,
            "replicas": row.replicas, "restarts": counts.restarts}


def to_dict(row: Deployment, status: SlotsReport) -> dict[str, Any]:
    """Serialise a deployment for the API and pages (never its keys)."""
    return {"id": row.id, "environment": row.environment, "slot": row.slot,
            "model": {"name": row.model_name, "version": row.model_version},
            "replicas": row.replicas, "resources": row.resources, "state": row.state,
            "traffic": row.traffic, "url": base_url(row) or None, "backend": row.backend,
            "endpoint": row.endpoint or row.environment, "scoring_uri": row.scoring_uri,
            "health": health(row, status), "job_id": row.job_id,
            "keys_rotated_at": row.keys_rotated_at.isoformat(),
            "key_age_days": round((utcnow() - row.keys_rotated_at).total_seconds() / 86400, 2),
            "created_at": row.created_at.isoformat(),
            "activated_at": row.activated_at.isoformat() if row.activated_at else None,
            "error": row.error}


def _grant(job_id: str | None) -> dict[str, str] | None:
    """Who let the serving slot's job change a protected environment (approver or rollback)."""
    grant = protected.grant_of(job_id) if job_id else None
    return None if grant is None else {"kind": grant.kind, "reference": grant.reference,
                                       "actor": grant.actor}


def overview() -> list[dict[str, Any]]:
    """Every environment with its active slot, slots still running, and the last ones."""
    status = backend().slots_report()
    guarded = protected.protected_environments()
    out = []
    for env in environments():
        rows = history(env, limit=10)
        current = next((r for r in rows if r.state == DeploymentState.ACTIVE), None)
        prev = previous(env)
        out.append({
            "environment": env,
            "active": to_dict(current, status) if current else None,
            "slots": [to_dict(r, status) for r in rows if r.deployment_state.should_run],
            "history": [to_dict(r, status) for r in rows],
            "previous_version": prev.model_version if prev else None,
            "runtime_reporting": status.reporting,
            "protected": env in guarded,
            "serving_grant": _grant(current.job_id if current else None),
        })
    return out
