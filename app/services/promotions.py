"""Promotion requests with four-eyes approval: the only module that changes their state.

State machine (every state but PENDING is final):
    PENDING ──approve──► APPROVED   (the prod deploy job is queued; its id is recorded)
       ├─────reject────► REJECTED
       ├─────expire────► EXPIRED    (lazily on read/decision, and by the beat task)
       └───supersede───► SUPERSEDED (a newer request for the same environment)
Guards: only MLOps.Engineer/Admin may request; only MLOps.Approver/Admin may decide, and never
on their own request, admins included. A model version that failed the promotion gate (its
thresholds in the pipeline file, judged when the request was made) is approved only with an
explicit override and its reason, audited as promotion.gate-overridden. Each transition is a
conditional UPDATE on the current state, so two approvers clicking at once cannot both approve
(the loser gets 409).
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from flask import current_app
from sqlalchemy import func, select, update

from app.auth.roles import Role, has_role
from app.db import Job, Promotion, utcnow
from app.errors import Conflict, Forbidden, NotFound, ValidationError
from app.extensions import db
from app.services import audit, notifications, promotion_evidence, protected
from app.services.audit import AuditAction
from app.services.promotion_evidence import gate_failed as gate_failed  # the gate, for callers
from app.services.promotion_evidence import gate_of as gate_of
from app.services.promotion_evidence import metric_rows as metric_rows  # shown by the pages

MAX_REASON = 2000
MAX_COMMENT = 2000
# A policy travels to the publish job as a parameter (jobs.MAX_PARAMS_BYTES, JSON-escaped).
MAX_POLICY = 12_000


class PromotionKind(enum.StrEnum):
    """What an approval changes: a model version (a deploy) or an API revision (a publish)."""

    MODEL = "model"
    API_REVISION = "api-revision"


def promotable_environments() -> tuple[str, ...]:
    """Promotion targets: the protected environments (staging is changed directly)."""
    return tuple(sorted(protected.protected_environments()))


class PromotionState(enum.StrEnum):
    """Life cycle of a promotion request; everything but PENDING is final."""

    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    SUPERSEDED = "SUPERSEDED"

    @property
    def is_final(self) -> bool:
        return self is not PromotionState.PENDING


# The allowed transitions, in one table (tests walk it).
TRANSITIONS: dict[PromotionState, frozenset[PromotionState]] = {
    PromotionState.PENDING: frozenset({PromotionState.APPROVED, PromotionState.REJECTED,
                                       PromotionState.EXPIRED, PromotionState.SUPERSEDED}),
    **{s: frozenset() for s in PromotionState if s is not PromotionState.PENDING},
}

_AUDIT = {
    PromotionState.APPROVED: AuditAction.PROMOTION_APPROVED,
    PromotionState.REJECTED: AuditAction.PROMOTION_REJECTED,
    PromotionState.EXPIRED: AuditAction.PROMOTION_EXPIRED,
    PromotionState.SUPERSEDED: AuditAction.PROMOTION_SUPERSEDED,
}


# --------------------------------------------------------------------------- reading


def ttl() -> dt.timedelta:
    """How long a request waits for a decision (MODELGATE_PROMOTION_TTL_HOURS)."""
    return dt.timedelta(hours=float(current_app.config.get("PROMOTION_TTL_HOURS", 72)))


def get(promotion_id: str) -> Promotion:
    """Return a request (expired first if its time is up), or raise NotFound."""
    row = db.session.get(Promotion, promotion_id)
    if row is None:
        raise NotFound(f"promotion request {promotion_id!r} does not exist")
    _expire_if_due(row)
    return row


def list_promotions(*, state: str | None = None, requested_by: str | None = None,
                    environment: str | None = None, limit: int = 100) -> list[Promotion]:
    """Return requests, pending first, then newest first (expiring overdue ones first)."""
    expire_due()
    query = select(Promotion)
    if state:
        query = query.where(Promotion.state == state.upper())
    if requested_by:
        query = query.where(Promotion.requested_by == requested_by)
    if environment:
        query = query.where(Promotion.environment == environment)
    pending_first = (Promotion.state != PromotionState.PENDING.value)
    query = query.order_by(pending_first, Promotion.requested_at.desc(), Promotion.id)
    return list(db.session.scalars(query.limit(max(1, min(limit, 500)))))


def pending_count() -> int:
    """How many requests wait for a decision (the inbox badge); cheap, no expiry pass."""
    return int(db.session.scalar(
        select(func.count()).select_from(Promotion)
        .where(Promotion.state == PromotionState.PENDING.value,
               Promotion.expires_at > utcnow())) or 0)


def to_dict(row: Promotion) -> dict[str, Any]:
    """Serialise a request for the REST API and webhooks."""
    what: dict[str, Any] = (
        {"api": {"name": row.model_name, "policy_xml": row.policy_xml}}
        if row.kind == PromotionKind.API_REVISION else
        {"model": {"name": row.model_name, "version": row.model_version}})
    return {
        "id": row.id, "kind": row.kind, "environment": row.environment, **what,
        "plan": plan(row),
        "reason": row.reason, "state": row.state, "requested_by": row.requested_by,
        "requested_at": row.requested_at.isoformat(), "expires_at": row.expires_at.isoformat(),
        "evidence": row.evidence or {}, "decided_by": row.decided_by,
        "decided_at": row.decided_at.isoformat() if row.decided_at else None,
        "comment": row.comment, "deploy_job_id": row.deploy_job_id,
        "superseded_by": row.superseded_by,
        "gate": gate_of(row), "gate_override": row.gate_override,
    }


# --------------------------------------------------------------------------- transitions


def request(version: Any, environment: Any, reason: Any, actor: str, *,
            roles: frozenset[str]) -> Promotion:
    """Record a PENDING request (superseding older pending ones for the environment).

    Raises:
        Forbidden: the caller is neither MLOps.Engineer nor MLOps.Admin.
        ValidationError: unknown version or environment, or a missing reason.
    """
    environment = _check_requester(environment, roles)
    if not isinstance(version, str | int) or not str(version).strip().isdigit():
        raise ValidationError("version: give a registered model version number",
                              errors=[{"field": "version", "message": "required, a number"}])
    reason = check_reason(reason)
    version = str(version).strip()
    name, evidence = promotion_evidence.model_evidence(environment, version)
    if (evidence.get("current") or {}).get("version") == version:
        raise ValidationError(f"version: {environment} already serves v{version}",
                              errors=[{"field": "version", "message": "already serving"}])
    return _record(PromotionKind.MODEL, environment, name, version, None, reason, actor,
                   evidence, {"model": name, "model_version": version,
                              "current_version": (evidence.get("current") or {}).get("version")})


def request_from(fields: Any, actor: str, *, roles: frozenset[str]) -> Promotion:
    """Record a request from a form or a JSON body (``kind``: model or api-revision)."""
    raw_kind = fields.get("kind") or PromotionKind.MODEL.value
    try:
        kind = PromotionKind(raw_kind)
    except ValueError:
        raise ValidationError(f"kind: use one of {', '.join(k.value for k in PromotionKind)}",
                              errors=[{"field": "kind", "message": "unknown kind"}]) from None
    environment = fields.get("environment") or "prod"
    if kind is PromotionKind.API_REVISION:
        return request_api_revision(environment, fields.get("policy_xml"), fields.get("reason"),
                                    actor, roles=roles)
    return request(fields.get("version"), environment, fields.get("reason"), actor, roles=roles)


def request_api_revision(environment: Any, policy_xml: Any, reason: Any, actor: str, *,
                         roles: frozenset[str]) -> Promotion:
    """Record a PENDING request to publish a new API revision of a protected environment.

    Without `policy_xml` the new revision carries the environment's default policy.

    Raises:
        Forbidden: the caller is neither MLOps.Engineer nor MLOps.Admin.
        ValidationError: unknown environment, no reason, or a policy that is not text.
    """
    from flask import current_app

    from app.services import apis

    environment = _check_requester(environment, roles)
    reason = check_reason(reason)
    if policy_xml in (None, ""):
        policy_xml = apis.render_policy(current_app.config, environment)
    if not isinstance(policy_xml, str) or not policy_xml.strip():
        raise ValidationError("policy_xml: give the policy document as text",
                              errors=[{"field": "policy_xml", "message": "not a string"}])
    if len(policy_xml) > MAX_POLICY:
        raise ValidationError(f"policy_xml: at most {MAX_POLICY} characters",
                              errors=[{"field": "policy_xml", "message": "too long"}])
    name = apis.api_name(environment)
    current = apis.current(name)
    if current is not None and current.policy_xml == policy_xml:
        raise ValidationError(f"policy_xml: {name} revision {current.revision} already serves "
                              "this policy", errors=[{"field": "policy_xml",
                                                      "message": "no change"}])
    evidence = {"current": ({"revision": current.revision, "policy_xml": current.policy_xml}
                            if current else None)}
    return _record(PromotionKind.API_REVISION, environment, name, "", policy_xml, reason,
                   actor, evidence, {"api": name, "current_revision":
                                     current.revision if current else None})


def plan(row: Promotion) -> list[str]:
    """What approving does, step by step, as the approver reads it before deciding."""
    from app.services import apis

    name = apis.api_name(row.environment)
    revisions = apis.revisions_of(name)
    next_revision = revisions[0].revision + 1 if revisions else 1
    if row.kind == PromotionKind.API_REVISION:
        return [f"publishes {name} revision {next_revision} to {row.environment} with the "
                "requested policy"]
    steps = [f"deploys v{row.model_version} to {row.environment} blue/green"]
    if apis.current(name) is None:
        steps.append(f"then publishes {name} revision {next_revision} (the default policy)")
    return steps


def policy_diff(row: Promotion) -> list[str]:
    """The requested policy against the revision it replaces (unified diff lines)."""
    import difflib

    from app.services import apis

    if row.kind != PromotionKind.API_REVISION:
        return []
    base = (row.evidence or {}).get("current") or {}
    if row.state == PromotionState.PENDING:
        live = apis.current(row.model_name)
        base = {"revision": live.revision, "policy_xml": live.policy_xml} if live else {}
    before = str(base.get("policy_xml") or "")
    label = f"revision {base['revision']} (current)" if base.get("revision") else "(no revision)"
    return list(difflib.unified_diff(before.splitlines(), (row.policy_xml or "").splitlines(),
                                     label, "requested", lineterm=""))


def _check_requester(environment: Any, roles: frozenset[str]) -> str:
    if not has_role(roles, Role.ENGINEER):
        raise Forbidden(f"requesting a promotion needs the {Role.ENGINEER.value} role")
    environment = environment or "prod"
    allowed = promotable_environments()
    if environment not in allowed:
        raise ValidationError(f"environment: promotions go to the protected environments "
                              f"({', '.join(allowed)})",
                              errors=[{"field": "environment", "message": "not promotable"}])
    return str(environment)


def check_reason(reason: Any, *, ask: str = "say why this change should go to production"
                 ) -> str:
    """Return the reason stripped; `ask` is what a missing reason's error asks for.

    Raises:
        ValidationError: no reason, or one longer than MAX_REASON characters (field `reason`).
    """
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationError(f"reason: {ask}",
                              errors=[{"field": "reason", "message": "required"}])
    if len(reason) > MAX_REASON:
        raise ValidationError(f"reason: at most {MAX_REASON} characters",
                              errors=[{"field": "reason", "message": "too long"}])
    return reason.strip()


def _record(kind: PromotionKind, environment: str, name: str, version: str,
            policy_xml: str | None, reason: str, actor: str, evidence: dict[str, Any],
            details: dict[str, Any]) -> Promotion:
    """Store a PENDING request, audit and announce it, supersede older ones of its kind."""
    now = utcnow()
    row = Promotion(kind=kind.value, environment=environment, model_name=name,
                    model_version=version, policy_xml=policy_xml, reason=reason,
                    state=PromotionState.PENDING.value, requested_by=actor, requested_at=now,
                    expires_at=now + ttl(), evidence=evidence, updated_at=now)
    db.session.add(row)
    db.session.commit()
    audit.record(actor, AuditAction.PROMOTION_REQUESTED, f"promotion:{row.id}",
                 {"kind": kind.value, "environment": environment, **details,
                  "reason": row.reason, "expires_at": row.expires_at.isoformat()})
    older = db.session.scalars(select(Promotion.id).where(
        Promotion.environment == environment, Promotion.kind == kind.value,
        Promotion.state == PromotionState.PENDING.value, Promotion.id != row.id)).all()
    for old_id in older:
        _move(old_id, PromotionState.SUPERSEDED, "modelgate", superseded_by=row.id)
    notifications.notify("promotion.requested", to_dict(row))
    return get(row.id)


def approve(promotion_id: str, actor: str, *, roles: frozenset[str],
            comment: Any = "", gate_override: Any = None) -> Promotion:
    """Approve a pending request and queue its job: the deploy of its version (which also
    publishes the environment's API when it has none) or the publish of its API revision.

    Args:
        gate_override: the reason for approving a version that failed the promotion gate;
            required then, refused otherwise (there is nothing to override).

    Raises:
        Forbidden: missing role, or the approver is the requester.
        Conflict: the request is no longer pending (decided, expired or superseded).
        ValidationError: the gate failed and no override reason was given, or the reverse.
        ServiceUnavailable: the job queue is down (the request stays pending).
    """
    from app.services import jobs
    from app.services.kinds import JobKind

    row = _decidable(promotion_id, actor, roles, comment)
    text = _comment(comment)
    override = promotion_evidence.override_reason(row, gate_override)
    if not _move(row.id, PromotionState.APPROVED, actor, audit_it=False, comment=text,
                 gate_override=override):
        raise Conflict(f"promotion request {row.id} was decided by someone else just now")

    def link(job: Job) -> None:
        # The grant: the worker runs a protected environment's job only when an APPROVED
        # promotion names it, so the link is written before the job is queued.
        _set(row.id, PromotionState.APPROVED, deploy_job_id=job.id)

    if row.kind == PromotionKind.API_REVISION:
        kind, params = JobKind.PUBLISH, {"environment": row.environment,
                                         "policy_xml": row.policy_xml}
    else:
        kind, params = JobKind.DEPLOY, {"environment": row.environment,
                                        "version": row.model_version}
    try:
        # Not jobs.submit, which refuses protected changes to everyone: this is the approved
        # promotion's job (four eyes were checked above; the approver need not be an engineer).
        job = jobs.submit_granted(kind, params, actor, link)
    except Exception:
        # Not queued: put the request back so it can be approved again once the queue is up.
        _set(row.id, PromotionState.APPROVED, state=PromotionState.PENDING.value,
             decided_by=None, decided_at=None, comment=None, deploy_job_id=None,
             gate_override=None)
        raise
    details: dict[str, Any] = {"environment": row.environment,
                               "model_version": row.model_version,
                               "requested_by": row.requested_by, "comment": text,
                               "deploy_job_id": job.id}
    if override is not None:
        audit.record(actor, AuditAction.PROMOTION_GATE_OVERRIDDEN, f"promotion:{row.id}",
                     {"environment": row.environment, "model_version": row.model_version,
                      "requested_by": row.requested_by, "reason": override,
                      "failures": (gate_of(row) or {}).get("failures") or [],
                      "deploy_job_id": job.id})
        details["gate_override"] = override
    audit.record(actor, AuditAction.PROMOTION_APPROVED, f"promotion:{row.id}", details)
    done = get(row.id)
    notifications.notify("promotion.approved", to_dict(done))
    return done


def reject(promotion_id: str, actor: str, *, roles: frozenset[str],
           comment: Any = "") -> Promotion:
    """Reject a pending request; it is closed for good.

    Raises:
        Forbidden: missing role, or the approver is the requester.
        Conflict: the request is no longer pending.
    """
    row = _decidable(promotion_id, actor, roles, comment)
    if not _move(row.id, PromotionState.REJECTED, actor, comment=_comment(comment)):
        raise Conflict(f"promotion request {row.id} was decided by someone else just now")
    done = get(row.id)
    notifications.notify("promotion.rejected", to_dict(done))
    return done


def expire_due(now: dt.datetime | None = None) -> list[str]:
    """Move every PENDING request past its expiry to EXPIRED; return their ids."""
    now = now or utcnow()
    due = db.session.scalars(select(Promotion.id).where(
        Promotion.state == PromotionState.PENDING.value, Promotion.expires_at <= now)).all()
    return [pid for pid in due if _move(pid, PromotionState.EXPIRED, "modelgate")]


# --------------------------------------------------------------------------- internals


def _decidable(promotion_id: str, actor: str, roles: frozenset[str], comment: Any) -> Promotion:
    """Check role, four eyes and state before a decision; return the pending request."""
    if not has_role(roles, Role.APPROVER):
        raise Forbidden(f"deciding on a promotion needs the {Role.APPROVER.value} role")
    if comment is not None and not isinstance(comment, str):
        raise ValidationError("comment must be text",
                              errors=[{"field": "comment", "message": "not a string"}])
    row = get(promotion_id)
    if row.requested_by == actor:
        # Four eyes: enforced for admins too, since an admin requesting and approving is one
        # person deciding alone.
        raise Forbidden("you requested this promotion; someone else has to decide on it")
    if row.state != PromotionState.PENDING:
        reason = {PromotionState.EXPIRED: "it expired",
                  PromotionState.SUPERSEDED: f"a newer request ({row.superseded_by}) replaced it"
                  }.get(PromotionState(row.state), f"it is already {row.state}")
        raise Conflict(f"promotion request {row.id} cannot be decided: {reason}")
    return row


def _comment(comment: Any) -> str:
    text = (comment or "").strip() if isinstance(comment, str) else ""
    if len(text) > MAX_COMMENT:
        raise ValidationError(f"comment: at most {MAX_COMMENT} characters",
                              errors=[{"field": "comment", "message": "too long"}])
    return text


def _expire_if_due(row: Promotion) -> None:
    if row.state == PromotionState.PENDING and row.expires_at <= utcnow():
        _move(row.id, PromotionState.EXPIRED, "modelgate")
        db.session.refresh(row)


def _move(promotion_id: str, to: PromotionState, actor: str, *, audit_it: bool = True,
          comment: str | None = None, superseded_by: str | None = None,
          gate_override: str | None = None) -> bool:
    """Apply one transition out of PENDING if the row is still PENDING; audit it."""
    assert to in TRANSITIONS[PromotionState.PENDING]
    values: dict[str, Any] = {"state": to.value}
    if to in (PromotionState.APPROVED, PromotionState.REJECTED):
        values.update(decided_by=actor, decided_at=utcnow(), comment=comment)
    if gate_override is not None:
        values["gate_override"] = gate_override
    if superseded_by:
        values["superseded_by"] = superseded_by
    if not _set(promotion_id, PromotionState.PENDING, **values):
        return False
    row = db.session.get(Promotion, promotion_id)
    if audit_it and row is not None:
        details: dict[str, Any] = {"environment": row.environment,
                                   "model_version": row.model_version,
                                   "requested_by": row.requested_by}
        if comment is not None:
            details["comment"] = comment
        if superseded_by:
            details["superseded_by"] = superseded_by
        audit.record(actor, _AUDIT[to], f"promotion:{promotion_id}", details)
        if to in (PromotionState.EXPIRED, PromotionState.SUPERSEDED):
            notifications.notify(_AUDIT[to].value, to_dict(row))
    return True


def _set(promotion_id: str, from_state: PromotionState, **values: Any) -> bool:
    """Conditional UPDATE: apply `values` only while the row is in `from_state`."""
    values.setdefault("updated_at", utcnow())
    result = db.session.execute(update(Promotion).where(
        Promotion.id == promotion_id, Promotion.state == from_state.value).values(**values))
    db.session.commit()
    db.session.expire_all()
    return bool(result.rowcount)  # type: ignore[attr-defined]
