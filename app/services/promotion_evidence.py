"""What an approver decides on, frozen when a promotion is requested: the candidate's metrics
and fairness report next to those of the version the environment serves, the promotion gate's
result for the candidate, and the candidate's staging smoke test."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select

from app.db import Job, JobStatus, Promotion
from app.errors import NotFound, ValidationError
from app.extensions import db
from app.labels import METRICS

logger = logging.getLogger(__name__)


def _metric_order(name: str) -> tuple[int, str]:
    """The label table's order first (what the model page shows), then the rest by key."""
    order = list(METRICS)
    return (order.index(name), name) if name in order else (len(order), name)


def metric_rows(evidence: dict[str, Any]) -> list[dict[str, Any]]:
    """Metrics of the candidate next to the current version's, with the difference."""
    candidate = (evidence.get("candidate") or {}).get("metrics") or {}
    current = (evidence.get("current") or {}).get("metrics") or {}
    rows = []
    for name in sorted(set(candidate) | set(current), key=_metric_order):
        new, old = candidate.get(name), current.get(name)
        delta = new - old if isinstance(new, int | float) and isinstance(old, int | float) \
            else None
        rows.append({"name": name, "candidate": new, "current": old, "delta": delta})
    return rows


def model_evidence(environment: str, version: str) -> tuple[str, dict[str, Any]]:
    """What the approver needs: the candidate's and the current version's metrics and fairness
    reports, the gate's result for the candidate, and the staging smoke results of the
    candidate (frozen at request time).

    Raises:
        ValidationError: the version is unknown.
        ServiceUnavailable: the candidate's fairness report cannot be read (the gate could
            not be judged, so nothing is recorded).
    """
    from app.services import deployments, fairness, models

    name = models.default_model_name()
    try:
        candidate = models.get_version(name, version)
    except NotFound:
        raise ValidationError(f"version: {name} has no version {version}",
                              errors=[{"field": "version", "message": "no such version"}]
                              ) from None
    judged = fairness.for_evidence(candidate)
    evidence: dict[str, Any] = {
        "candidate": {"version": version, "metrics": dict(candidate.metrics),
                      "created_at": candidate.created_at.isoformat(),
                      "fairness": judged["report"]},
        "gate": judged["gate"],
        "current": None, "staging": staging_evidence(version)}
    active = deployments.active(environment)
    if active is not None:
        current: dict[str, Any] = {"version": active.model_version, "metrics": {}}
        try:
            serving = models.get_version(active.model_name, active.model_version)
            current["metrics"] = dict(serving.metrics)
            current["fairness"] = _current_fairness(serving)
            identity = candidate.training_identity()
            # Same data, parameters and seed: approving would change nothing.
            evidence["identical_to_current"] = identity is not None and \
                identity == serving.training_identity() and serving.version != version
        except NotFound:
            logger.info("current %s version %s is not in the registry", environment,
                        active.model_version)
        evidence["current"] = current
    return name, evidence


def _current_fairness(serving: Any) -> dict[str, Any] | None:
    """The serving version's report for comparison; None when it has none or is unreadable
    (the request is still worth making: the candidate's own report decides the gate)."""
    from app.errors import ServiceUnavailable
    from app.services import fairness

    try:
        return fairness.compact(fairness.report(serving))
    except ServiceUnavailable:
        return None


def staging_evidence(version: str) -> dict[str, Any]:
    """Whether staging serves the version, and the smoke test of its last staging deploy."""
    from app.services import deployments, jobs
    from app.services.kinds import JobKind

    active = deployments.active("staging")
    out: dict[str, Any] = {"serving": bool(active and active.model_version == version),
                           "serving_version": active.model_version if active else None,
                           "deploy_job_id": None, "deploy_status": None, "smoke": None}
    recent = db.session.scalars(select(Job).where(Job.kind == JobKind.DEPLOY.value)
                                .order_by(Job.created_at.desc()).limit(100))
    for job in recent:
        result = job.result or {}
        params = job.params or {}
        env = result.get("environment") or params.get("environment") or "staging"
        ran = str((result.get("model") or {}).get("version") or params.get("version") or "")
        if env != "staging" or ran != version:
            continue
        out.update(deploy_job_id=job.id, deploy_status=job.status,
                   finished_at=job.finished_at.isoformat() if job.finished_at else None)
        smoke = [line.message for line in jobs.logs(job.id) if "smoke test" in line.message]
        out["smoke"] = smoke[-1] if smoke else None
        if job.status == JobStatus.SUCCEEDED:
            break
    return out


# --------------------------------------------------------------------------- the gate

MAX_OVERRIDE = 2000


def gate_of(row: Promotion) -> dict[str, Any] | None:
    """The promotion gate's result for a model request, as judged when it was requested
    (None for an API revision, or a request made before the gate existed)."""
    gate = (row.evidence or {}).get("gate")
    return gate if isinstance(gate, dict) else None


def gate_failed(row: Promotion) -> bool:
    """Whether approving the request needs an override."""
    gate = gate_of(row)
    return row.kind == "model" and gate is not None and gate.get("passed") is False


def override_reason(row: Promotion, reason: Any) -> str | None:
    """The override reason an approval of this request carries (None: it needs none).

    Raises:
        ValidationError: the gate failed and no reason was given, the reason is too long, or
            a reason was given for a request that passed (there is nothing to override).
    """
    given = reason.strip() if isinstance(reason, str) else reason
    if not gate_failed(row):
        if given not in (None, ""):
            raise ValidationError("gate_override: this request passed the promotion gate; "
                                  "there is nothing to override",
                                  errors=[{"field": "gate_override",
                                           "message": "nothing to override"}])
        return None
    failures = "; ".join((gate_of(row) or {}).get("failures") or []) or "a threshold"
    if not isinstance(given, str) or not given:
        raise ValidationError(f"gate_override: v{row.model_version} fails the promotion gate "
                              f"({failures}); approving it needs an explicit override with a "
                              "reason",
                              errors=[{"field": "gate_override",
                                       "message": "required: the version fails the gate"}])
    if len(given) > MAX_OVERRIDE:
        raise ValidationError(f"gate_override: at most {MAX_OVERRIDE} characters",
                              errors=[{"field": "gate_override", "message": "too long"}])
    return given
