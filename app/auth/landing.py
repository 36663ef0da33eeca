"""Where each role lands after signing in (README.md, "Roles")."""

from __future__ import annotations

from flask import current_app, url_for

from app.auth.roles import Role
from app.auth.users import User

# The approvals inbox, by the endpoint names its blueprint may use (issue 8).
APPROVALS_ENDPOINTS = ("approvals.inbox", "approvals.index", "approvals.list")


def landing_page(user: User) -> str:
    """Engineers: the dashboard; approvers: the approvals inbox; testers: the score tester."""
    if user.can(Role.ENGINEER):
        return url_for("dashboard.index")
    if Role.APPROVER in user.roles:
        endpoints = current_app.view_functions
        for endpoint in APPROVALS_ENDPOINTS:
            if endpoint in endpoints:
                return url_for(endpoint)
        return url_for("dashboard.index")
    if Role.SCORER in user.roles and "scoring.index" in current_app.view_functions:
        return url_for("scoring.index")
    return url_for("dashboard.index")
