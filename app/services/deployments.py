"""Deployments: desired state of each environment's blue/green slots, their keys, and views.

The deployments table is the desired state the local runtime keeps running (it starts
replicas for STARTING, ACTIVE and DRAINING rows and stops the others). Plaintext keys exist
only encrypted here (Fernet, key file MODELGATE_HOME/secrets/deployment-keys.key, 0600), in
the gateway's secret named value, and in an admin's audited reveal; the runtime gets digests
(MODELGATE_HOME/runtime/keys/<deployment id>.json).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import select, update

from app.db import Deployment, DeploymentState, new_id, utcnow
from app.errors import NotFound
from app.extensions import db
from app.keyfiles import load_or_create_fernet
from app.services import protected
from app.serving.keys import generate_keys, write_keys_file

RUNTIME_HOST = "127.0.0.1"
SLOTS: tuple[str, str] = ("blue", "green")
STATUS_STALE_SECONDS = 10.0


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


# --------------------------------------------------------------------------- paths and keys


def runtime_dir(home: Path) -> Path:
    """MODELGATE_HOME/runtime: desired-state companions (keys digests, status)."""
    return Path(home) / "runtime"


def keys_file(home: Path, deployment_id: str) -> Path:
    """The digest-only keys file the replicas of a deployment read."""
    return runtime_dir(home) / "keys" / f"{deployment_id}.json"


def status_file(home: Path) -> Path:
    """The runtime's replica status report (written by app.runtime)."""
    return runtime_dir(home) / "status.json"


def model_dir(home: Path, name: str, version: str) -> Path:
    """Where a model package is materialised for the runtime."""
    return Path(home) / "models" / name / str(version)


def url_of(port: int | None) -> str:
    """Loopback URL of a slot's shared port."""
    return f"http://{RUNTIME_HOST}:{port}" if port else ""


def _fernet(home: Path) -> Fernet:
    """The instance's key-encryption key for deployment keys (secrets/, 0600)."""
    return load_or_create_fernet(Path(home) / "secrets" / "deployment-keys.key")


def keys_of(home: Path, deployment: Deployment) -> tuple[str, str]:
    """Decrypt a deployment's (primary, secondary) keys; callers must never log them."""
    fernet = _fernet(home)
    return (fernet.decrypt(deployment.primary_key_enc.encode()).decode(),
            fernet.decrypt(deployment.secondary_key_enc.encode()).decode())


def store_keys(home: Path, deployment_id: str, primary: str, secondary: str) -> None:
    """Record the encrypted keys on the row, then write their digests for the replicas.

    The row first: an interrupted rotation re-syncs the file from the row, and the gateway
    only ever gets a key after both hold it.
    """
    fernet = _fernet(home)
    db.session.execute(update(Deployment).where(Deployment.id == deployment_id).values(
        primary_key_enc=fernet.encrypt(primary.encode()).decode(),
        secondary_key_enc=fernet.encrypt(secondary.encode()).decode(),
        updated_at=utcnow()))
    db.session.commit()
    path = keys_file(home, deployment_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_keys_file(path, primary, secondary)


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
    return ActiveDeployment(row.id, row.environment, row.slot, url_of(row.port), row.model_name,
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
    """Environment names that have ever had a deployment, plus the configured ones."""
    names = set(db.session.scalars(select(Deployment.environment).distinct()))
    return sorted(names | {"staging", "prod"}, key=lambda n: (n != "staging", n != "prod", n))


# --------------------------------------------------------------------------- writing


def create_slot(home: Path, *, environment: str, model_name: str, model_version: str,
                replicas: int, resources: dict[str, Any], job_id: str) -> Deployment:
    """Record a new STARTING slot (the other colour than the active one) with fresh keys."""
    current = active_row(environment)
    slot = SLOTS[1] if current is not None and current.slot == SLOTS[0] else SLOTS[0]
    primary, secondary = generate_keys()
    fernet = _fernet(home)
    row = Deployment(id=new_id(), environment=environment, slot=slot, model_name=model_name,
                     model_version=str(model_version), replicas=replicas,
                     resources=dict(resources), state=DeploymentState.STARTING, traffic=0,
                     job_id=job_id, primary_key_enc=fernet.encrypt(primary.encode()).decode(),
                     secondary_key_enc=fernet.encrypt(secondary.encode()).decode())
    # Digests on disk before the row exists: the runtime starts replicas as soon as it sees it.
    path = keys_file(home, row.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_keys_file(path, primary, secondary)
    db.session.add(row)
    db.session.commit()
    return row


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


# --------------------------------------------------------------------------- views


def read_status(home: Path) -> dict[str, Any]:
    """The runtime's status report, with `fresh` false when it is missing or stale."""
    try:
        data: dict[str, Any] = json.loads(status_file(home).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"fresh": False, "deployments": {}}
    try:
        updated = dt.datetime.fromisoformat(str(data.get("updated_at")))
        fresh = (utcnow() - updated).total_seconds() < STATUS_STALE_SECONDS
    except ValueError:
        fresh = False
    data["fresh"] = fresh
    return data


def health(row: Deployment, status: dict[str, Any]) -> dict[str, Any]:
    """Replica health of a slot from the runtime's report."""
    entry = status.get("deployments", {}).get(row.id)
    if not row.deployment_state.should_run:
        return {"state": "stopped", "ready": 0, "replicas": row.replicas, "restarts": 0}
    if not status.get("fresh") or entry is None:
        return {"state": "unknown", "ready": 0, "replicas": row.replicas, "restarts": 0}
    ready = int(entry.get("replicas_ready", 0))
    return {"state": "healthy" if ready >= row.replicas else
            ("degraded" if ready else "down"), "ready": ready, "replicas": row.replicas,
            "restarts": sum(int(r.get("restarts", 0)) for r in entry.get("replicas", []))}


def to_dict(row: Deployment, status: dict[str, Any]) -> dict[str, Any]:
    """Serialise a deployment for the API and pages (never its keys)."""
    return {"id": row.id, "environment": row.environment, "slot": row.slot,
            "model": {"name": row.model_name, "version": row.model_version},
            "replicas": row.replicas, "resources": row.resources, "state": row.state,
            "traffic": row.traffic, "url": url_of(row.port) if row.port else None,
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


def overview(home: Path) -> list[dict[str, Any]]:
    """Every environment with its active slot, slots still running, and the last ones."""
    status = read_status(home)
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
            "runtime_reporting": bool(status.get("fresh")),
            "protected": env in guarded,
            "serving_grant": _grant(current.job_id if current else None),
        })
    return out
