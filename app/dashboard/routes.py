"""The dashboard: the pipeline's four stages, the environments, and the latest jobs, live."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, render_template

from app.auth.roles import Role
from app.auth.users import signed_in
from app.dashboard import charts
from app.services import jobs, overview

bp = Blueprint("dashboard", __name__)
LATEST_JOBS = 10


@bp.get("/")
@signed_in
def index() -> Any:
    """Show the dashboard (everyone signed in may read it; run buttons need MLOps.Engineer)."""
    return render_template("dashboard/index.html", stages=overview.stages(),
                           environments=overview.environment_cards(),
                           jobs=jobs.list_jobs(limit=LATEST_JOBS),
                           last_pipeline=overview.last_job("pipeline"))


@bp.get("/dashboard/state")
@signed_in
def state() -> Any:
    """The stages and latest jobs as JSON (the live view's polling fallback)."""
    return {"stages": [overview.stage_dict(s) for s in overview.stages()],
            "jobs": [jobs.to_dict(j) for j in jobs.list_jobs(limit=LATEST_JOBS)]}


@bp.get("/dashboard/environments")
@signed_in
def environments() -> Any:
    """The environment cards alone, re-fetched by the page when a deploy or publish ends."""
    return render_template("dashboard/_environments.html",
                           environments=overview.environment_cards())


@bp.get("/dashboard/jobs")
@signed_in
def latest_jobs() -> Any:
    """The latest jobs table alone, re-fetched by the page when a new job appears."""
    return render_template("dashboard/_jobs.html", jobs=jobs.list_jobs(limit=LATEST_JOBS))


@bp.app_context_processor
def dashboard_helpers() -> dict[str, Any]:
    """Expose the traffic charts and the engineer role to templates."""
    return {"series_chart": charts.series_chart, "ENGINEER": Role.ENGINEER}


@bp.get("/health")
def health() -> Any:
    """Liveness: 200 while the panel process is up; ?deep=1 also checks the DB and Redis."""
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
