"""The correlated timeline: approval → deployment → key rotation → API revision → calls served.

Built from the audit trail (the single record of what changed) and the gateway's request log
(what was served). "Which version served an environment at time T" is the model version of
the last traffic switch of that environment at or before T: the deploy job records one
`deployment.traffic-switched` event per switch, rollbacks included (they are deploys too).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from app.db import AuditEvent
from app.extensions import db
from app.services.audit import AuditAction

# Actions that belong on the timeline, and the kind of step each one is.
KINDS: dict[str, str] = {
    AuditAction.PROMOTION_REQUESTED.value: "approval",
    AuditAction.PROMOTION_APPROVED.value: "approval",
    AuditAction.PROMOTION_REJECTED.value: "approval",
    AuditAction.PROMOTION_EXPIRED.value: "approval",
    AuditAction.PROMOTION_SUPERSEDED.value: "approval",
    AuditAction.PROMOTION_GATE_OVERRIDDEN.value: "approval",
    AuditAction.DEPLOYED.value: "deployment",
    AuditAction.TRAFFIC_SWITCHED.value: "deployment",
    AuditAction.ROLLED_BACK.value: "rollback",
    AuditAction.KEYS_ROTATED.value: "keys",
    AuditAction.API_PUBLISHED.value: "api",
    AuditAction.API_ROLLED_BACK.value: "api",
    AuditAction.MODEL_DRIFT.value: "drift",
}
SCAN_LIMIT = 5000


@dataclass(frozen=True)
class Served:
    """The answer to "which version served `environment` at `at`", with its evidence."""

    environment: str
    at: dt.datetime
    model_version: str | None
    since: dt.datetime | None = None
    event_id: int | None = None
    deployment: str | None = None


@dataclass(frozen=True)
class TimelineEntry:
    """One step on the timeline."""

    id: int
    time: dt.datetime
    kind: str
    action: str
    actor: str
    target: str
    environment: str | None
    model_version: str | None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CallBucket:
    """Calls served by one model version in one time bucket."""

    start: dt.datetime
    model_version: str
    calls: int
    errors: int
    rejected: int


def environment_of(event: AuditEvent) -> str | None:
    """The environment an event is about (its target or its details)."""
    if event.target.startswith("environment:"):
        return event.target.split(":", 1)[1]
    env = (event.details or {}).get("environment")
    return str(env) if env else None


def served_version_at(environment: str, at: dt.datetime) -> Served:
    """The model version that served `environment` at time `at` (None before the first)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    event = db.session.scalar(
        select(AuditEvent).where(AuditEvent.action == AuditAction.TRAFFIC_SWITCHED.value,
                                 AuditEvent.target == f"environment:{environment}",
                                 AuditEvent.time <= at)
        .order_by(AuditEvent.time.desc(), AuditEvent.id.desc()).limit(1))
    if event is None:
        return Served(environment, at, None)
    details = event.details or {}
    version = details.get("model_version")
    return Served(environment, at, str(version) if version is not None else None, event.time,
                  event.id, details.get("deployment"))


def switches(environment: str) -> list[tuple[dt.datetime, str]]:
    """Every traffic switch of an environment, oldest first: (time, model version)."""
    rows = db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == AuditAction.TRAFFIC_SWITCHED.value,
                                 AuditEvent.target == f"environment:{environment}")
        .order_by(AuditEvent.time, AuditEvent.id))
    return [(r.time, str((r.details or {}).get("model_version"))) for r in rows]


def entries(*, environment: str | None = None, model_version: str | None = None,
            limit: int = 300) -> list[TimelineEntry]:
    """Timeline steps oldest first, filtered by environment and/or model version.

    With a version, events that carry no version (key rotations, API revisions) are kept
    when they happened while that version served their environment.
    """
    rows = list(db.session.scalars(
        select(AuditEvent).where(AuditEvent.action.in_(list(KINDS)))
        .order_by(AuditEvent.id.desc()).limit(SCAN_LIMIT)))
    rows.reverse()
    serving: dict[str, list[tuple[dt.datetime, str]]] = {}
    out: list[TimelineEntry] = []
    for event in rows:
        env = environment_of(event)
        details = event.details or {}
        version = details.get("model_version")
        version = str(version) if version is not None else None
        if environment and env != environment:
            continue
        if model_version and version != model_version:
            if version is not None or env is None:
                continue
            if env not in serving:
                serving[env] = switches(env)
            if _serving_at(serving[env], event.time) != model_version:
                continue
        out.append(TimelineEntry(event.id, event.time, KINDS[event.action], event.action,
                                 event.actor, event.target, env, version, details))
    return out[-limit:]


def _serving_at(history: list[tuple[dt.datetime, str]], at: dt.datetime) -> str | None:
    current = None
    for time, version in history:
        if time > at:
            break
        current = version
    return current


def calls(*, environment: str | None = None, model_version: str | None = None,
          bucket_seconds: int = 300) -> list[CallBucket]:
    """Calls per model version per time bucket from the backend's gateway calls."""
    from app.services.backend import backend

    counts: dict[tuple[dt.datetime, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for call in backend().traffic(environment, None).calls:
        version = call.model_version if call.model_version is not None else "unknown"
        if model_version and version != model_version:
            continue
        epoch = int(call.time.timestamp()) // bucket_seconds * bucket_seconds
        start = dt.datetime.fromtimestamp(epoch, dt.UTC)
        figures = counts[(start, version)]
        figures[0] += 1
        if call.status >= 500:
            figures[1] += 1
        elif call.status >= 400:
            figures[2] += 1
    return [CallBucket(start, version, *figures)
            for (start, version), figures in sorted(counts.items())]
