"""Sign-in and sign-out."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request

from app.security import safe_next

bp = Blueprint("auth", __name__, url_prefix="/auth")


@bp.get("/login")
def login() -> Any:
    """Show the sign-in page."""
    return render_template("auth/login.html", next=safe_next(request.args.get("next")))
