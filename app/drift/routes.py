"""Drift page: per environment, each field's PSI over the recent checks with its current band,
the alert of the latest check, and a Retrain button that queues the train job (engineers).

Engineers and approvers (and admins) read it: they answer for what serves and for retraining.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, url_for
from flask_login import current_user

from app.auth.roles import Role
from app.auth.users import role_required
from app.drift import charts
from app.errors import NotFound
from app.services import deployments, drift, jobs
from app.services.kinds import JobKind

bp = Blueprint("drift", __name__, url_prefix="/drift")
READERS = (Role.ENGINEER, Role.APPROVER)


def _environment(name: str) -> str:
    if name not in deployments.environments():
        raise NotFound(f"environment {name!r} is not known")
    return name


@bp.get("/")
@role_required(*READERS)
def index() -> Any:
    """The production environment's drift (the one callers depend on), else the first."""
    names = deployments.environments()
    return redirect(url_for("drift.detail", environment="prod" if "prod" in names
                            else names[0]))


@bp.get("/<environment>")
@role_required(*READERS)
def detail(environment: str) -> Any:
    """An environment's drift: the alert, a chart per field, the latest check's bins."""
    view = drift.overview(_environment(environment))
    settings = drift.settings()
    chart_of = {
        s.field: charts.psi_chart(
            s.field, [charts.PsiPoint(row.checked_at, psi, band, row.model_version)
                      for row, psi, band in s.points],
            watch=settings.watch, act=settings.act)
        for s in view.series}
    return render_template("drift/detail.html", view=view, charts=chart_of, settings=settings,
                           environments=deployments.environments(),
                           can_retrain=current_user.can(Role.ENGINEER),
                           every=_period(float(current_app.config["DRIFT_CHECK_SECONDS"])))


@bp.post("/<environment>/retrain")
@role_required(Role.ENGINEER)
def retrain(environment: str) -> Any:
    """Queue the train job (the configured model on the latest data) from a drift alert."""
    _environment(environment)
    job = jobs.submit(JobKind.TRAIN, {}, current_user.username, roles=current_user.roles)
    flash(f"Retraining queued after the drift in {environment}: job {job.id}. Deploy and "
          "promote the new version as usual once it is registered.")
    return redirect(url_for("jobs.detail", job_id=job.id))



def _period(seconds: float) -> str:
    """The check interval as people say it: ``hour``, ``30 minutes``, ``5 seconds``."""
    from app.labels import plural

    if seconds == 3600:
        return "hour"
    if seconds >= 3600 and seconds % 3600 == 0:
        return plural(int(seconds // 3600), "hour")
    if seconds >= 60 and seconds % 60 == 0:
        return plural(int(seconds // 60), "minute")
    return plural(round(seconds), "second")
