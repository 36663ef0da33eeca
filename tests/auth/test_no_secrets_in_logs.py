"""Logs through a full sign-in, token renewal, bad bearer tokens and sign-out hold no secret."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msal
import pytest

from tests.auth.conftest import issuer_redirect, page_csrf, session_user, start_login
from tests.identity_support import Issuer, sign_in


def test_no_password_secret_code_or_token_is_logged(oidc_app: Any, issuer: Issuer,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    from app.auth import session_tokens
    from app.auth.users import User

    caplog.set_level(logging.DEBUG)  # everything: msal, urllib3, flask-login, the panel
    client = oidc_app.test_client()
    browser = issuer.session()
    callback = issuer_redirect(browser, start_login(client), issuer, "alice")
    code = parse_qs(urlsplit(callback).query)["code"][0]
    assert client.get(callback).status_code == 302
    with client.session_transaction() as sess:
        session_id = sess["sid"]
    data = session_user(oidc_app, client)
    user = User(id=data.id, name=data.name, username=data.username, roles=frozenset())
    with oidc_app.app_context():
        store = session_tokens.identity_client().store
        first = session_tokens.user_access_token(user)
        second = session_tokens.user_access_token(user)  # renewed with the refresh token
        cache = store.load(user.id)
        refresh = [e["secret"] for e in cache.search(msal.TokenCache.CredentialType.REFRESH_TOKEN)]
        id_tokens = [e["secret"] for e in cache.search(msal.TokenCache.CredentialType.ID_TOKEN)]
    for bad in (first[:-4] + "AAAA", "junk", first):
        client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {bad}"})
    # A wrong password at the issuer (from another browser), then sign-out.
    wrong = "Wrong-" + issuer.password("bob")[::-1]
    refused = sign_in(issuer.session(), start_login(oidc_app.test_client()), "bob", wrong)
    assert refused.status_code == 401
    page = client.get("/").get_data(as_text=True)
    logout = client.post("/auth/logout", data={"csrf_token": page_csrf(page)})
    end_session = logout.headers["Location"]
    logs = caplog.text
    browser.get(end_session, allow_redirects=False, timeout=10)

    secrets = {
        "alice's password": issuer.password("alice"),
        "a mistyped password": wrong,
        "panel client secret": issuer.secret("modelgate-panel"),
        "CI client secret": issuer.secret("modelgate-ci"),
        "authorization code": code,
        "panel session id": session_id,
        "access token": first, "renewed access token": second,
        "SECRET_KEY": oidc_app.config["SECRET_KEY"],
        "Redis password": urlsplit(oidc_app.config["REDIS_URL"]).password or "",
        **{f"refresh token {i}": v for i, v in enumerate(refresh)},
        **{f"ID token {i}": v for i, v in enumerate(id_tokens)},
    }
    assert refresh and id_tokens and all(secrets.values())
    issuer_log = issuer.log.read_text(errors="replace")
    for name, value in secrets.items():
        # Tokens are long; a distinctive slice is enough and also catches truncated echoes.
        probe = value if len(value) < 40 else value[-32:]
        assert probe not in logs, f"{name} appears in the panel's logs"
        assert probe not in issuer_log, f"{name} appears in the issuer's log"
    assert "signed in: user=alice" in logs and "signed out: user=alice" in logs
    assert "Authorization" not in logs
