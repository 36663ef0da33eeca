"""Server-side panel sessions: sign-out kills copied cookies, roles are re-checked, Redis down."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.db import AuditEvent
from tests.auth.conftest import (
    PANEL_URL,
    full_sign_in,
    issuer_redirect,
    page_csrf,
    session_user,
    start_login,
)
from tests.conftest import build_app, sign_in
from tests.identity_support import Issuer, sign_out, start_issuer


def _copy_cookie(app: Any, source: Any) -> Any:
    """Another client holding a copy of `source`'s session cookie (a stolen cookie)."""
    name = app.config["SESSION_COOKIE_NAME"]
    cookie = source.get_cookie(name)
    assert cookie is not None
    thief = app.test_client()
    thief.set_cookie(name, cookie.value)
    return thief


def _sign_out(client: Any) -> Any:
    page = client.get("/").get_data(as_text=True)
    response = client.post("/auth/logout", data={"csrf_token": page_csrf(page)})
    assert response.status_code == 302
    return response


def _audit(app: Any, action: str) -> list[AuditEvent]:
    from app.extensions import db

    with app.app_context():
        return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_a_copied_cookie_is_dead_after_sign_out(oidc_app: Any, issuer: Issuer) -> None:
    client = oidc_app.test_client()
    full_sign_in(client, issuer, "alice")
    thief = _copy_cookie(oidc_app, client)
    assert thief.get("/").status_code == 200  # a copy works while the session lives
    _sign_out(client)
    assert thief.get("/").status_code == 302
    assert thief.get("/jobs/").headers["Location"].startswith("/auth/login")
    api = thief.get("/api/v1/jobs")
    assert api.status_code == 401 and api.mimetype == "application/problem+json"


def test_sign_out_ends_the_users_other_sessions_only(oidc_app: Any, issuer: Issuer) -> None:
    laptop, phone, other = (oidc_app.test_client() for _ in range(3))
    full_sign_in(laptop, issuer, "bob")
    full_sign_in(phone, issuer, "bob")
    full_sign_in(other, issuer, "carol")
    assert phone.get("/").status_code == 200
    _sign_out(laptop)
    # bob's token cache, which his sessions share, is gone: all of his sessions end now.
    assert phone.get("/").status_code == 302
    assert other.get("/").status_code == 200


def test_sign_in_and_sign_out_are_audited(oidc_app: Any, issuer: Issuer) -> None:
    client = oidc_app.test_client()
    full_sign_in(client, issuer, "dave")
    session_id = client.get_cookie(oidc_app.config["SESSION_COOKIE_NAME"]).value
    _sign_out(client)
    signed_in = [e for e in _audit(oidc_app, "auth.sign-in") if e.actor == "dave"]
    signed_out = [e for e in _audit(oidc_app, "auth.sign-out") if e.actor == "dave"]
    assert len(signed_in) == 1 and len(signed_out) == 1
    assert signed_in[0].target == "user:dave"
    assert signed_in[0].details == {"roles": ["MLOps.Admin", "Score.Invoke"]}
    assert signed_out[0].details == {"other_sessions_ended": 0}
    stored = json.dumps([signed_in[0].details, signed_out[0].details])
    assert session_id not in stored


def test_redis_down_fails_closed(tmp_path: Path, redis_server: Any, sqlite_url: str,
                                 caplog: pytest.LogCaptureFixture) -> None:
    app = build_app(tmp_path, sqlite_url, redis_server.url)
    client = app.test_client()
    sign_in(client, "alice")
    csrf = page_csrf(client.get("/").get_data(as_text=True))
    redis_server.kill()
    with caplog.at_level(logging.WARNING, logger="app.auth.sessions"):
        page = client.get("/jobs/")
        api = client.get("/api/v1/jobs")
        out = client.post("/auth/logout", data={"csrf_token": csrf})
    # Refused (fail closed), and honestly: 503, since signing in again cannot help until Redis
    # is back (a redirect to sign-in would only lead to the sign-in's own 503).
    assert page.status_code == 503 and "session store is unreachable" in page.get_data(
        as_text=True)
    assert api.status_code == 503 and api.mimetype == "application/problem+json"
    assert api.headers["Retry-After"] == "5"
    assert "session store is unreachable" in api.get_json()["detail"]
    assert out.status_code == 503 and "sign-out could not be recorded" in out.get_data(
        as_text=True)
    assert "session check failed: the session store (Redis) is unreachable" in caplog.text
    assert "sign-out not completed" in caplog.text


def test_sign_in_with_redis_down_answers_503(oidc_app: Any, issuer: Issuer,
                                             redis_server: Any) -> None:
    client = oidc_app.test_client()
    callback = issuer_redirect(issuer.session(), start_login(client), issuer, "erin")
    redis_server.kill()
    response = client.get(callback)
    assert response.status_code == 503
    assert "Sessions cannot be stored right now" in response.get_data(as_text=True)
    assert client.get("/").status_code == 302  # nobody signed in


@pytest.fixture
def own_issuer(tmp_path: Path) -> Any:
    """An issuer of this test's own (its users are edited and it is restarted)."""
    home = tmp_path / "issuer-home"
    with start_issuer(home) as running:
        yield running


def _restart(issuer: Issuer) -> Any:
    """Stop the issuer and start it again on the same port (it re-reads dev-credentials)."""
    port = int(issuer.url.split(":")[2].split("/")[0])
    issuer.process.terminate()
    issuer.process.wait(15)
    return start_issuer(issuer.home, port=port)


def test_a_role_change_reaches_the_session_within_the_bound(
        own_issuer: Issuer, tmp_path: Path, redis_server: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    # A bound of 0 s: every request re-checks (the default is 300 s).
    app = build_app(own_issuer.home, f"sqlite:///{tmp_path / 'panel.db'}", redis_server.url,
                    ISSUER_URL=own_issuer.url, PANEL_URL=PANEL_URL,
                    CA_BUNDLE=str(own_issuer.ca), SESSION_ROLE_TTL_SECONDS=0)
    client = app.test_client()
    full_sign_in(client, own_issuer, "alice")
    assert session_user(app, client).role_names == ["MLOps.Engineer", "Score.Invoke"]
    csrf = page_csrf(client.get("/").get_data(as_text=True))

    path = own_issuer.home / "dev-credentials.json"
    creds = json.loads(path.read_text())
    creds["users"]["alice"]["roles"] = ["Score.Invoke"]  # an admin takes Engineer away
    path.write_text(json.dumps(creds))
    with _restart(own_issuer) as restarted:
        page = client.get("/").get_data(as_text=True)
        assert "MLOps.Engineer" not in page and "Score.Invoke" in page
        refused = client.post("/jobs/", data={"kind": "train", "csrf_token": csrf})
        assert refused.status_code == 403
        assert session_user(app, client).role_names == ["Score.Invoke"]
        changed = _audit(app, "auth.roles-changed")
        assert [(e.actor, e.details) for e in changed] == [
            ("alice", {"before": ["MLOps.Engineer", "Score.Invoke"], "after": ["Score.Invoke"]})]

        # If the roles cannot be re-checked (here: alice signed out at the issuer elsewhere,
        # which revokes her refresh tokens), the session ends.
        browser = restarted.session()
        full_sign_in(app.test_client(), restarted, "alice", browser=browser)
        assert sign_out(browser, restarted.url).status_code == 200
        with caplog.at_level(logging.INFO, logger="app.auth.sessions"):
            assert client.get("/").status_code == 302
        assert "session ended: roles could not be re-checked (invalid_grant) user=alice" in (
            caplog.text)
        assert client.get("/").status_code == 302  # and it stays ended


def test_an_admin_ends_all_of_a_users_sessions_from_the_command_line(
        tmp_path: Path, redis_server: Any, sqlite_url: str) -> None:
    from click.testing import CliRunner

    from app.cli import main

    app = build_app(tmp_path, sqlite_url, redis_server.url)
    laptop, phone, other = (app.test_client() for _ in range(3))
    sign_in(laptop, "alice")
    sign_in(phone, "alice")
    sign_in(other, "bob")
    env = {"MODELGATE_HOME": str(tmp_path), "MODELGATE_DATABASE_URL": sqlite_url,
           "MODELGATE_REDIS_URL": redis_server.url, "MODELGATE_SECRET_KEY": "k" * 48}
    result = CliRunner().invoke(main, ["sessions", "end", "alice"], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "alice: 2 panel session(s) ended"
    assert laptop.get("/").status_code == 302 and phone.get("/").status_code == 302
    assert other.get("/").status_code == 200
    [event] = _audit(app, "auth.sessions-revoked")
    assert event.target == "user:alice" and event.details == {"ended": 2}
    assert event.actor.startswith("cli:")


@pytest.mark.parametrize("value", [-1, "soon", True])
def test_a_bad_role_bound_refuses_to_start(tmp_path: Path, sqlite_url: str, value: Any) -> None:
    from app.errors import ConfigError

    with pytest.raises(ConfigError, match="MODELGATE_SESSION_ROLE_TTL_SECONDS"):
        build_app(tmp_path, sqlite_url, "redis://127.0.0.1:9/0", SESSION_ROLE_TTL_SECONDS=value)
