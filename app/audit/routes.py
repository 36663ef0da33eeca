"""Audit pages: recent events with filters, chain verification, exports, and the timeline.

Who sees what: the trail, its verification and its exports are for MLOps.Approver and
MLOps.Admin (the people who answer for production changes); the timeline is for everyone
signed in, read-only, since it is what engineers look at after a deploy or a rollback.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from flask import Blueprint, Response, render_template, request, stream_with_context

from app.auth.roles import Role
from app.auth.users import role_required, signed_in
from app.db import utcnow
from app.errors import AppError
from app.params import int_arg
from app.services import audit, deployments, models, timeline

logger = logging.getLogger(__name__)

bp = Blueprint("audit", __name__, url_prefix="/audit")


@bp.get("/")
@role_required(Role.APPROVER)
def index() -> Any:
    """Recent events, newest first, filtered by action prefix, actor or target."""
    filters = {k: (request.args.get(k) or "").strip() or None
               for k in ("action", "actor", "target")}
    rows = audit.events(limit=int_arg("limit", 200, minimum=1),
                        action=filters["action"], actor=filters["actor"],
                        target=filters["target"])
    return render_template("audit/index.html", rows=rows, filters=filters, report=None)


@bp.post("/verify")
@role_required(Role.APPROVER)
def verify() -> Any:
    """Check the whole hash chain and show the result (the first broken row, if any)."""
    report = audit.verify()
    return render_template("audit/index.html", rows=audit.events(limit=50), filters={},
                           report=report)


@bp.get("/export.<any(jsonl, csv):fmt>")
@role_required(Role.APPROVER)
def export(fmt: str) -> Any:
    """Download the whole trail, oldest first, as JSON Lines or CSV."""
    lines = iter(audit.export_jsonl() if fmt == "jsonl" else audit.export_csv())
    mimetype = "application/x-ndjson" if fmt == "jsonl" else "text/csv"
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    return Response(stream_with_context(lines), mimetype=mimetype, headers={
        "Content-Disposition": f'attachment; filename="modelgate-audit-{stamp}.{fmt}"'})


@bp.get("/timeline", endpoint="timeline")
@signed_in
def timeline_view() -> Any:
    """Approval → deployment → keys → API revision → calls, by environment or version."""
    environments, versions = _filter_choices()
    errors: dict[str, str] = {}
    environment = (request.args.get("environment") or "").strip() or None
    if environment is not None and environment not in environments:
        errors["environment"] = f"no environment is called {environment!r}"
        environment = None
    version = (request.args.get("model_version") or "").strip() or None
    if version is not None and version not in versions:
        errors["model_version"] = f"no version {version!r} is registered"
        version = None
    at_raw = (request.args.get("at") or "").strip()
    served = None
    at_error = None
    if at_raw:
        at = _parse_time(at_raw)
        if at is None:
            at_error = "give a time like 2026-11-25T14:30:00 (UTC)"
        else:
            served = timeline.served_version_at(environment or "prod", at)
    return render_template(
        "audit/timeline.html", entries=timeline.entries(environment=environment,
                                                        model_version=version),
        calls=timeline.calls(environment=environment, model_version=version),
        environment=environment, model_version=version, at=at_raw, served=served,
        at_error=at_error, errors=errors, environments=environments, versions=versions)


def _filter_choices() -> tuple[list[str], list[str]]:
    """The environments and registered model versions the timeline can be filtered by."""
    try:
        versions = [v.version for v in models.list_versions(models.default_model_name())]
    except AppError as exc:  # an unreadable registry leaves the version filter empty
        logger.info("timeline: registry unavailable: %s", exc.message)
        versions = []
    return deployments.environments(), versions


def _parse_time(raw: str) -> dt.datetime | None:
    """A datetime-local or ISO 8601 value; without a zone it means UTC."""
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
