"""The dashboard: where every stage stands, and the latest jobs."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, render_template

from app.auth.users import signed_in
from app.services import jobs
from app.services.kinds import AVAILABLE_KINDS, KIND_SPECS

bp = Blueprint("dashboard", __name__)


@bp.get("/")
@signed_in
def index() -> Any:
    """Show the dashboard."""
    runnable = [KIND_SPECS[k] for k in sorted(AVAILABLE_KINDS)]
    return render_template("dashboard/index.html", jobs=jobs.list_jobs(limit=10),
                           runnable=runnable)


@bp.get("/health")
def health() -> Any:
    """Answer 200 while the panel process is up (DESIGN.md); ?deep=1 also checks DB and Redis."""
    from flask import request
    from sqlalchemy import text

    from app.extensions import db

    if not request.args.get("deep"):
        return {"status": "ok"}
    checks: dict[str, str] = {}
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        current_app.extensions["redis"].ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {exc.__class__.__name__}"
    ok = all(v == "ok" for v in checks.values())
    return {"status": "ok" if ok else "degraded", "checks": checks}, (200 if ok else 503)
