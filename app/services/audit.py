"""The audit trail: append-only events, each carrying the hash of the one before it.

Editing, deleting or reordering any row breaks the chain at that row, which `verify` reports
(`modelgate audit verify`, and the panel's audit page). Details never hold secrets: values
under secret-looking keys are replaced before they are hashed and stored.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from app.db import AuditEvent, AuditHead, utcnow
from app.extensions import db

GENESIS = "0" * 64
SECRET_KEY_PATTERN = re.compile(r"(secret|password|passwd|token|credential|api[_-]?key|^key$|"
                                r"_key$|authorization)", re.IGNORECASE)


class AuditAction(enum.StrEnum):
    """What happened; the vocabulary of the audit trail."""

    SIGN_IN = "auth.sign-in"
    SIGN_OUT = "auth.sign-out"
    ROLES_CHANGED = "auth.roles-changed"
    SESSIONS_REVOKED = "auth.sessions-revoked"
    JOB_QUEUED = "job.queued"
    JOB_SUCCEEDED = "job.succeeded"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    DATASET_REGISTERED = "dataset.registered"
    MODEL_REGISTERED = "model.registered"
    ENVIRONMENT_PROVISIONED = "environment.provisioned"
    DEPLOYED = "deployment.deployed"
    TRAFFIC_SWITCHED = "deployment.traffic-switched"
    ROLLED_BACK = "deployment.rolled-back"
    KEYS_ROTATED = "keys.rotated"
    KEY_REVEALED = "keys.revealed"
    API_PUBLISHED = "api.published"
    API_ROLLED_BACK = "api.rolled-back"
    PROMOTION_REQUESTED = "promotion.requested"
    PROMOTION_APPROVED = "promotion.approved"
    PROMOTION_REJECTED = "promotion.rejected"
    PROMOTION_EXPIRED = "promotion.expired"
    PROMOTION_SUPERSEDED = "promotion.superseded"
    PROMOTION_GATE_OVERRIDDEN = "promotion.gate-overridden"
    MODEL_DRIFT = "model.drift"
    SETTINGS_CHANGED = "settings.changed"


@dataclass(frozen=True)
class VerifyReport:
    """The result of checking the chain: ok, how many rows, and the first broken one."""

    ok: bool
    checked: int
    broken_id: int | None = None
    reason: str = ""


def redact(details: Any) -> Any:
    """Replace values under secret-looking keys, recursively."""
    if isinstance(details, dict):
        return {k: ("[redacted]" if SECRET_KEY_PATTERN.search(str(k)) else redact(v))
                for k, v in details.items()}
    if isinstance(details, list):
        return [redact(v) for v in details]
    return details


def compute_hash(event_id: int, time_iso: str, actor: str, action: str, target: str,
                 details: Any, prev_hash: str) -> str:
    """Hash an event's content together with the previous hash (canonical JSON, SHA-256)."""
    canonical = json.dumps(
        {"id": event_id, "time": time_iso, "actor": actor, "action": action, "target": target,
         "details": details, "prev": prev_hash},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def record(actor: str, action: AuditAction | str, target: str,
           details: dict[str, Any] | None = None) -> AuditEvent:
    """Append an event to the chain and commit it.

    The head row is updated first, so its row lock (PostgreSQL) or the database write lock
    (SQLite) serialises concurrent appends: no two events can claim the same predecessor.
    """
    clean = json.loads(json.dumps(redact(details or {}), default=str))
    session = db.session
    session.execute(update(AuditHead).where(AuditHead.id == 1)
                    .values(last_id=AuditHead.last_id + 1))
    head = session.execute(select(AuditHead).where(AuditHead.id == 1)).scalar_one()
    session.refresh(head)
    now = utcnow()
    event = AuditEvent(id=head.last_id, time=now, actor=actor[:200], action=str(action),
                       target=target[:300], details=clean, prev_hash=head.last_hash)
    event.hash = compute_hash(event.id, now.isoformat(), event.actor, event.action,
                              event.target, clean, head.last_hash)
    head.last_hash = event.hash
    session.add(event)
    session.commit()
    return event


def events(*, limit: int = 200, action: str | None = None, target: str | None = None,
           before_id: int | None = None, actor: str | None = None) -> list[AuditEvent]:
    """Return events newest first, optionally filtered by action prefix, target or actor."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(max(1, min(limit, 5000)))
    if action:
        query = query.where(AuditEvent.action.startswith(action))
    if target:
        query = query.where(AuditEvent.target == target)
    if before_id:
        query = query.where(AuditEvent.id < before_id)
    if actor:
        query = query.where(AuditEvent.actor == actor)
    return list(db.session.scalars(query))


def _in_order(batch: int = 1000) -> Iterator[AuditEvent]:
    last = 0
    while True:
        rows = list(db.session.scalars(select(AuditEvent).where(AuditEvent.id > last)
                                       .order_by(AuditEvent.id).limit(batch)))
        if not rows:
            return
        yield from rows
        last = rows[-1].id
        db.session.expunge_all()


def verify() -> VerifyReport:
    """Walk the chain from the first event and report the first row that does not fit."""
    prev_hash = GENESIS
    expected_id = 1
    checked = 0
    for event in _in_order():
        if event.id != expected_id:
            return VerifyReport(False, checked, event.id,
                                f"row {expected_id} is missing (found {event.id} next)")
        if event.prev_hash != prev_hash:
            return VerifyReport(False, checked, event.id,
                                "its prev_hash does not match the previous row's hash")
        recomputed = compute_hash(event.id, event.time.isoformat(), event.actor, event.action,
                                  event.target, event.details, event.prev_hash)
        if recomputed != event.hash:
            return VerifyReport(False, checked, event.id,
                                "its content does not match its hash (edited)")
        prev_hash = event.hash
        expected_id += 1
        checked += 1
    head = db.session.get(AuditHead, 1)
    if head is not None and head.last_id != checked:
        return VerifyReport(False, checked, checked + 1,
                            f"the chain head says {head.last_id} rows but {checked} exist "
                            "(rows were deleted from the end)")
    return VerifyReport(True, checked)


def to_dict(event: AuditEvent) -> dict[str, Any]:
    """Serialise an event for export and the API."""
    return {"id": event.id, "time": event.time.isoformat(), "actor": event.actor,
            "action": event.action, "target": event.target, "details": event.details,
            "prev_hash": event.prev_hash, "hash": event.hash}


def export_jsonl() -> Iterable[str]:
    """Yield the whole trail as JSON Lines, oldest first."""
    for event in _in_order():
        yield json.dumps(to_dict(event), sort_keys=True) + "\n"


def export_csv() -> Iterable[str]:
    """Yield the whole trail as CSV, oldest first (details as a JSON column)."""
    columns = ["id", "time", "actor", "action", "target", "details", "prev_hash", "hash"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    yield buffer.getvalue()
    for event in _in_order():
        buffer.seek(0)
        buffer.truncate()
        row = to_dict(event)
        row["details"] = json.dumps(row["details"], sort_keys=True)
        writer.writerow([row[c] for c in columns])
        yield buffer.getvalue()
