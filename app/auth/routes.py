"""Sign-in and sign-out: thin views over app.auth.session_tokens and app.auth.sessions."""

from __future__ import annotations

import logging
from typing import Any

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user, login_user, logout_user

from app.auth import session_tokens, sessions
from app.auth.landing import landing_page
from app.auth.pending import FLOW_MAX_AGE_SECONDS, binding_cookie, new_binding
from app.security import safe_next

bp = Blueprint("auth", __name__, url_prefix="/auth")
log = logging.getLogger(__name__)


@bp.get("/login")
def login() -> Any:
    """Show the sign-in page (or go on to `next` when already signed in)."""
    target = safe_next(request.args.get("next"))
    if current_user.is_authenticated:
        return redirect(target)
    return render_template("auth/login.html", next=target)


@bp.post("/login")
def start() -> Any:
    """Start the auth code + PKCE flow and send the browser to the identity provider.

    The flow is kept on the server for this browser (app.auth.pending), named by a small
    cookie of its own that no other response writes.
    """
    secure = bool(current_app.config["SESSION_COOKIE_SECURE"])
    binding = new_binding(request.cookies.get(binding_cookie(secure)))
    response = redirect(session_tokens.start_sign_in(safe_next(request.form.get("next")),
                                                     binding))
    response.set_cookie(binding_cookie(secure), binding, max_age=FLOW_MAX_AGE_SECONDS,
                        path="/", secure=secure, httponly=True, samesite="Lax")
    return response


def _browser_binding() -> str:
    """The sign-in binding cookie this browser sent ("" when none)."""
    return request.cookies.get(binding_cookie(bool(current_app.config["SESSION_COOKIE_SECURE"])),
                               "")


@bp.get("/callback")
def callback() -> Any:
    """Finish the sign-in: check state, redeem the code, validate the ID token, log in."""
    try:
        user, target = session_tokens.finish_sign_in(request.args.to_dict(),
                                                     _browser_binding())
    except session_tokens.SignInError as exc:
        log.warning("sign-in refused: %s", exc.reason)
        return render_template("auth/error.html", message=exc.message), 400
    # A fresh session: nothing from before the sign-in (including the CSRF token) survives.
    sessions.start(user)
    login_user(user)
    log.info("signed in: user=%s roles=%s", user.username, ",".join(user.role_names) or "-")
    target = safe_next(target)
    if target == "/":  # no page was asked for: each role lands where its work is
        target = landing_page(user)
    return redirect(target)


@bp.post("/logout")
def logout() -> Any:
    """End the user's panel sessions, forget their tokens, then end the provider's session."""
    user = current_user._get_current_object() if current_user.is_authenticated else None
    if user is not None and user.via != "session":
        user = None
    sessions.end(user)
    end_session_url = session_tokens.sign_out(user)
    if user is not None:
        log.info("signed out: user=%s", user.username)
    logout_user()
    session.clear()
    flash("You have signed out.", "info")
    return redirect(end_session_url or url_for("auth.login"))
