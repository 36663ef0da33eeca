"""The local issuer's Flask app factory: discovery, JWKS, sign-in, token, userinfo, logout."""

from __future__ import annotations

import logging
import os
import secrets
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import OAuth2Error
from flask import Blueprint, Flask, Response, current_app, g, jsonify, render_template, request
from flask import session as flask_session
from flask_wtf.csrf import CSRFError, CSRFProtect, validate_csrf
from joserfc import jwt
from joserfc.errors import JoseError
from wtforms import ValidationError

from app.assets import asset_dir
from app.identity.credentials import (
    Client,
    ensure_dev_credentials,
    load_directory,
)
from app.identity.keys import KeyStore, ensure_keys
from app.identity.settings import (
    API_AUDIENCE,
    ISSUER_PATH,
    JWKS_MAX_AGE_SECONDS,
    IssuerSettings,
)
from app.identity.store import IssuerStore
from app.identity.throttle import SignInThrottle
from app.identity.tokens import (
    API_SCOPES,
    CLIENT_AUTH_METHODS,
    OIDC_SCOPES,
    IssuerContext,
    LocalAuthorizationServer,
    SignedIn,
    build_authorization_server,
    user_claims,
)

log = logging.getLogger("modelgate.identity")
TEMPLATES = asset_dir("templates") / "identity"
bp = Blueprint("identity", __name__, url_prefix=ISSUER_PATH)
csrf = CSRFProtect()


def _session_key(state_dir: Path) -> bytes:
    """The session signing key, generated once and kept 0600 next to the signing keys."""
    path = state_dir / "session.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    return path.read_bytes()


def create_app(settings: IssuerSettings) -> Flask:
    """Build the issuer app; creates credentials, keys and the database on first start."""
    state_dir = settings.state_dir
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ensure_dev_credentials(settings.home)
    ensure_keys(state_dir)
    ctx = IssuerContext(
        settings=settings,
        directory=load_directory(settings.home),
        keys=KeyStore(state_dir, settings.retired_key_grace),
        store=IssuerStore(state_dir / "issuer.db"),
    )
    app = Flask(__name__, template_folder=str(TEMPLATES), static_folder=None)
    app.config.update(
        SECRET_KEY=_session_key(state_dir),
        SESSION_COOKIE_NAME="__Host-modelgate-idp",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=8),
        MAX_CONTENT_LENGTH=64 * 1024,
        WTF_CSRF_TIME_LIMIT=3600,
        WTF_CSRF_SSL_STRICT=True,
    )
    # Authlib logs issued tokens at DEBUG; never let a token reach a log handler.
    authlib_logger = logging.getLogger("authlib")
    authlib_logger.setLevel(max(authlib_logger.getEffectiveLevel(), logging.INFO))
    app.extensions["modelgate.identity"] = ctx
    app.extensions["modelgate.identity.server"] = build_authorization_server(ctx, app)
    app.extensions["modelgate.identity.throttle"] = SignInThrottle(
        settings.max_failed_signins, settings.lockout_base_seconds, settings.lockout_max_seconds)
    csrf.init_app(app)
    # Only the sign-in form is a browser form; these take client credentials or bearer tokens,
    # and logout is a top-level navigation by design (RP-initiated logout).
    for view in ("token", "userinfo", "logout"):
        csrf.exempt(f"{__name__}.{view}")
    app.register_blueprint(bp)
    app.after_request(_security_headers)
    app.register_error_handler(CSRFError, _csrf_error)
    return app


def _ctx() -> IssuerContext:
    ctx: IssuerContext = current_app.extensions["modelgate.identity"]
    return ctx


def _server() -> LocalAuthorizationServer:
    server: LocalAuthorizationServer = current_app.extensions["modelgate.identity.server"]
    return server


def _throttle() -> SignInThrottle:
    throttle: SignInThrottle = current_app.extensions["modelgate.identity.throttle"]
    return throttle


def _security_headers(response: Response) -> Response:
    """Strict headers on every response; HTML is never cached."""
    form_action = " ".join(["'self'", *getattr(g, "form_action_extra", [])])
    script = "script-src 'self'; " if getattr(g, "allow_script", False) else ""
    response.headers.setdefault(
        "Content-Security-Policy",
        f"default-src 'none'; {script}style-src 'self'; img-src 'self'; "
        f"form-action {form_action}; frame-ancestors 'none'; base-uri 'none'; object-src 'none'",
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    # same-origin, not no-referrer: the CSRF check on HTTPS needs the Referer of our own form.
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers["Strict-Transport-Security"] = "max-age=31536000"
    if response.mimetype == "text/html" or request.endpoint in (
        "identity.authorize", "identity.token", "identity.userinfo", "identity.logout",
    ):
        response.headers["Cache-Control"] = "no-store"
    return response


def _page(template: str, status: int = 200, **context: Any) -> Response:
    response = Response(render_template(template, **context), status=status,
                        mimetype="text/html")
    return response


def _csrf_error(error: CSRFError) -> Response:
    """An expired or missing form token: ask the user to start again."""
    return _page("error.html", 400, title="Sign-in form expired",
                 message="The sign-in form expired or was not sent by this page. "
                         "Go back to the application and sign in again.")


@bp.get("/.well-known/openid-configuration")
def discovery() -> Response:
    """The OpenID Provider metadata; `issuer` is exactly the issuer URL."""
    issuer = _ctx().settings.issuer
    doc = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "userinfo_endpoint": f"{issuer}/userinfo",
        "jwks_uri": f"{issuer}/jwks",
        "end_session_endpoint": f"{issuer}/logout",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "form_post"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": [*OIDC_SCOPES, *API_SCOPES],
        "claims_supported": ["sub", "oid", "name", "preferred_username", "roles", "nonce",
                             "iss", "aud", "exp", "iat", "nbf", "auth_time", "at_hash"],
        "prompt_values_supported": ["none", "login"],
    }
    response = jsonify(doc)
    response.headers["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE_SECONDS}"
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


@bp.get("/jwks")
def jwks() -> Response:
    """Public signing keys: signer, next key, and retired keys whose tokens may still live."""
    response = jsonify(_ctx().keys.jwks())
    response.headers["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE_SECONDS}"
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


@bp.get("/health")
def health() -> Response:
    """Liveness for supervisors: answers once the app is loaded."""
    return jsonify({"status": "ok"})


@bp.get("/assets/signin.css")
def stylesheet() -> Response:
    """The sign-in page's hand-written stylesheet (no external assets)."""
    response = Response((TEMPLATES / "signin.css").read_text(encoding="utf-8"),
                        mimetype="text/css")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@bp.get("/assets/form_post.js")
def form_post_script() -> Response:
    """The one script: submits the form_post page (external file, so CSP has no inline script)."""
    response = Response((TEMPLATES / "form_post.js").read_text(encoding="utf-8"),
                        mimetype="text/javascript")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


def _to_client(response: Response) -> Response:
    """Deliver a redirect to the client as a form_post page when the client asked for one."""
    redirect_uri = request.values.get("redirect_uri", "")
    location = response.headers.get("Location", "")
    if (request.values.get("response_mode") != "form_post" or response.status_code != 302
            or not redirect_uri or not location.startswith(redirect_uri)):
        return response
    own = {k for k, _ in parse_qsl(urlsplit(redirect_uri).query)}
    fields = [(k, v) for k, v in parse_qsl(urlsplit(location).query) if k not in own]
    target = urlsplit(redirect_uri)
    g.form_action_extra = [f"{target.scheme}://{target.netloc}"]
    g.allow_script = True
    return _page("form_post.html", action=redirect_uri, fields=fields)


def _session_user() -> SignedIn | None:
    """The user of this browser's live session (the cookie names a row of the store)."""
    session_id = flask_session.get("sid")
    found = _ctx().store.session_user(session_id) if isinstance(session_id, str) else None
    user = _ctx().directory.users.get(found[0]) if found else None
    if user is None or found is None:
        return None
    return SignedIn(user, found[1])


def _signin_form(status: int, error: str | None = None, username: str = "",
                 retry_after: int = 0) -> Response:
    # Chrome applies CSP form-action to the redirect after the POST: allow the client's origin.
    target = urlsplit(request.args.get("redirect_uri", ""))
    if target.scheme in ("http", "https") and target.netloc:
        g.form_action_extra = [f"{target.scheme}://{target.netloc}"]
    response = _page("signin.html", status, error=error, username=username,
                     action=request.full_path, client_id=request.args.get("client_id", ""))
    if retry_after:
        response.headers["Retry-After"] = str(retry_after)
    return response


@bp.route("/authorize", methods=["GET", "POST"])
def authorize() -> Response:
    """Authorization endpoint: validates the request, then signs the user in with a form."""
    server = _server()
    current = _session_user()
    try:
        grant = server.get_consent_grant(end_user=current)
    except OAuth2Error as error:
        if getattr(error, "redirect_uri", None):
            response: Response = server.handle_error_response(None, error)
            return _to_client(response)
        return _page("error.html", 400, title="Invalid sign-in request",
                     message=error.description or error.error)
    if request.method == "GET":
        prompts = (request.args.get("prompt") or "").split()
        if current is not None and "login" not in prompts:
            issued: Response = server.create_authorization_response(grant=grant,
                                                                    grant_user=current)
            return _to_client(issued)
        return _signin_form(200)
    return _sign_in(grant)


def _sign_in(grant: Any) -> Response:
    """Check the posted credentials under the throttle, then issue the code."""
    username = request.form.get("username", "").strip()[:128]
    password = request.form.get("password", "")
    ip = request.remote_addr or "unknown"
    throttle = _throttle()
    wait = throttle.retry_after(username, ip)
    if wait:
        log.warning("sign-in refused while locked: user=%s ip=%s", _log_name(username), ip)
        return _signin_form(429, f"Too many failed sign-ins. Try again in {wait} seconds.",
                            username, retry_after=wait)
    user = _ctx().directory.authenticate(username, password)
    if user is None:
        locked = throttle.record_failure(username, ip)
        log.warning("sign-in failed: user=%s ip=%s", _log_name(username), ip)
        if locked:
            return _signin_form(429, "Incorrect username or password. Too many failed "
                                f"sign-ins: try again in {locked} seconds.", username,
                                retry_after=locked)
        return _signin_form(401, "Incorrect username or password.", username)
    throttle.record_success(username, ip)
    flask_session.clear()
    flask_session.permanent = True
    auth_time = int(time.time())
    lifetime = int(current_app.permanent_session_lifetime.total_seconds())
    flask_session["sid"] = _ctx().store.open_session(user.username, auth_time, lifetime)
    log.info("signed in: user=%s ip=%s", user.username, ip)
    response: Response = _server().create_authorization_response(
        grant=grant, grant_user=SignedIn(user, auth_time))
    return _to_client(response)


def _log_name(username: str) -> str:
    # A mistyped password often lands in the username field: log only names we know.
    return username if username in _ctx().directory.users else "<unknown>"


@bp.post("/token")
def token() -> Response:
    """Token endpoint (code + PKCE, refresh token, client credentials)."""
    response: Response = _server().create_token_response()
    return response


def _verify_access_token(raw: str) -> dict[str, Any] | None:
    """Verify one of our own user access tokens; None when anything is off."""
    ctx = _ctx()
    try:
        keyset = ctx.keys.keyset()
        decoded = jwt.decode(raw, keyset, algorithms=["RS256"])
        registry = jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": ctx.settings.issuer},
            exp={"essential": True}, sub={"essential": True},
        )
        registry.validate(decoded.claims)
    except (JoseError, ValueError):
        return None
    claims = decoded.claims
    audiences = {API_AUDIENCE, *ctx.directory.clients}
    if decoded.header.get("typ") != "at+jwt" or claims.get("aud") not in audiences:
        return None
    return claims


@bp.route("/userinfo", methods=["GET", "POST"])
def userinfo() -> Response:
    """Claims about the user a bearer access token was issued for."""
    auth = request.headers.get("Authorization", "")
    scheme, _, raw = auth.partition(" ")
    claims = _verify_access_token(raw.strip()) if scheme.lower() == "bearer" else None
    user = None
    if claims is not None and claims.get("idtyp") == "user":
        user = _ctx().directory.users.get(str(claims.get("preferred_username")))
    if user is None or user.oid != claims.get("sub"):  # type: ignore[union-attr]
        response = jsonify({"error": "invalid_token"})
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return response
    return jsonify(user_claims(user))


class _UnknownClient(Exception):
    """The logout request names a client we do not know, or a hint that is not ours."""


def _hint_claims(id_token_hint: str) -> dict[str, Any]:
    """The claims of an ID token we signed (expired or not); _UnknownClient otherwise."""
    try:
        claims = jwt.decode(id_token_hint, _ctx().keys.keyset(), algorithms=["RS256"]).claims
    except (JoseError, ValueError):
        raise _UnknownClient from None
    if claims.get("iss") != _ctx().settings.issuer:
        raise _UnknownClient
    return claims


def _logout_client(hint: dict[str, Any] | None, client_id: str | None) -> Client | None:
    """The client named by client_id and/or the hint; None when neither names one.

    Raises _UnknownClient when they name nobody we know or disagree.
    """
    hinted = str(hint.get("aud")) if hint else None
    if client_id and hinted and client_id != hinted:
        raise _UnknownClient  # OpenID RP-Initiated Logout §2: they must name the same client
    named = client_id or hinted
    if not named:
        return None
    client = _ctx().directory.clients.get(named)
    if client is None:
        raise _UnknownClient
    return client


def _confirmed(signed_in: SignedIn, hint: dict[str, Any] | None) -> bool:
    """A client's logout naming this very user, or the user's own click on our confirm form."""
    if hint is not None and hint.get("sub") == signed_in.user.oid:
        return True
    if request.method != "POST" or request.form.get("confirm") != "yes":
        return False
    try:
        validate_csrf(request.form.get("csrf_token"))
    except ValidationError:
        return False
    return True


@bp.route("/logout", methods=["GET", "POST"])
def logout() -> Response:
    """End-session: end the user's issuer sessions and revoke their refresh tokens.

    Without an `id_token_hint` naming the signed-in user, the user confirms first (a POST with
    a CSRF token), so another site cannot sign them out. Returns to `post_logout_redirect_uri`
    only when it is registered for the client named by `client_id` and/or `id_token_hint`;
    otherwise shows the signed-out page (400 when the client or the address is unknown).
    """
    signed_in = _session_user()
    raw_hint = request.values.get("id_token_hint")
    target = request.values.get("post_logout_redirect_uri")
    try:
        hint = _hint_claims(raw_hint) if raw_hint else None
        client = _logout_client(hint, request.values.get("client_id"))
    except _UnknownClient:
        hint, client, unknown = None, None, True
    else:
        unknown = False
    if signed_in is not None and not _confirmed(signed_in, hint):
        fields = [(name, value) for name, value in (
            ("post_logout_redirect_uri", target), ("state", request.values.get("state")),
            ("client_id", client.client_id if client else None)) if value]
        return _page("confirm_logout.html", username=signed_in.user.username, fields=fields,
                     action=request.path)
    flask_session.clear()
    if signed_in is not None:
        # Signing out ends all the user's sessions and offline grants, not only this browser's.
        user = signed_in.user.username
        ended = _ctx().store.end_sessions(user)
        revoked = _ctx().store.revoke_user_tokens(user)
        log.info("signed out: user=%s sessions_ended=%d refresh_tokens_revoked=%d", user,
                 ended, revoked)
    if not target:
        return _page("signed_out.html")
    if unknown:
        return _page("signed_out.html", 400,
                     note="The application that sent you here is not known to this issuer.")
    if client is None:
        return _page("signed_out.html",
                     note="The application did not say who it is, so you are not sent back.")
    if not client.check_post_logout_redirect_uri(target):
        log.warning("logout: unregistered post_logout_redirect_uri for client=%s",
                    client.client_id)
        return _page("signed_out.html", 400,
                     note="The application asked to return to an unregistered address.")
    state = request.values.get("state")
    location = add_params_to_uri(target, [("state", state)]) if state else target
    return Response(status=302, headers={"Location": location})
