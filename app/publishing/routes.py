"""APIs page: revisions per API with rollback buttons, and each API's recent traffic."""

from __future__ import annotations

from itertools import groupby
from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, url_for
from flask_login import current_user

from app.auth.roles import Role
from app.auth.users import role_required, signed_in
from app.services import apis, protected, traffic

bp = Blueprint("apis", __name__, url_prefix="/apis")


@bp.get("/")
@signed_in
def list() -> Any:  # noqa: A001  (view names follow the list/detail/create convention)
    """Show every API's revisions (current first) and its recent traffic."""
    # Revisions come ordered by API name, newest first within each API.
    grouped = {name: [*rows] for name, rows in groupby(apis.list_revisions(),
                                                       key=lambda row: row.api_name)}
    return render_template("publishing/list.html", grouped=grouped,
                           traffic=traffic.per_api(),
                           window_minutes=traffic.WINDOW_SECONDS // 60,
                           gateway=str(current_app.config["GATEWAY_URL"]).rstrip("/"),
                           can_publish=current_user.can(Role.ENGINEER),
                           protected_environments=protected.protected_environments())


@bp.post("/revisions/<id:revision_id>/rollback")
@role_required(Role.ENGINEER)
def rollback(revision_id: int) -> Any:
    """Make an earlier revision current again (audited)."""
    row = apis.rollback(revision_id, current_user.username)
    flash(f"{row.api_name} is back on revision {row.revision}.", "success")
    return redirect(url_for("apis.list"))
