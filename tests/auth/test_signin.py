"""Sign-in through MSAL against the real issuer: callback checks, session, token cache, logout."""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import msal
import pytest
import requests

from app.auth import session_tokens
from app.auth.oidc import SessionJWKClient
from app.auth.users import User
from tests.auth.conftest import (
    PANEL_URL,
    full_sign_in,
    issuer_redirect,
    page_csrf,
    session_user,
    start_login,
)
from tests.identity_support import Issuer


def _session_data(app: Any, client: Any) -> dict[str, Any]:
    """Decode the (signed, not encrypted) session cookie the way anyone holding it could."""
    cookie = client.get_cookie(app.config["SESSION_COOKIE_NAME"])
    assert cookie is not None
    data: dict[str, Any] = app.session_interface.get_signing_serializer(app).loads(cookie.value)
    return data


def test_alice_signs_in_and_sees_her_name_and_roles(oidc_app: Any, issuer: Issuer) -> None:
    client = oidc_app.test_client()
    before = page_csrf(client.get("/auth/login").get_data(as_text=True))
    response = full_sign_in(client, issuer, "alice", next_url="/jobs/")
    assert response.status_code == 302 and response.headers["Location"] == "/jobs/"
    page = client.get("/").get_data(as_text=True)
    assert "Alice" in page and "MLOps.Engineer, Score.Invoke" in page
    assert 'action="/jobs/"' in page  # her engineer actions are offered
    data = _session_data(oidc_app, client)
    # The session was rotated: no flow left, a new CSRF token, and the cookie holds only a
    # reference to the server-side record, which holds the user's public facts.
    assert "auth_flow" not in data and data["csrf_token"] != before
    assert set(data) == {"sid", "_user_id", "_fresh", "_id", "_permanent", "csrf_token"}
    user = session_user(oidc_app, client)
    assert user.username == "alice" and user.role_names == ["MLOps.Engineer", "Score.Invoke"]


def test_access_token_comes_from_the_server_side_cache(oidc_app: Any, issuer: Issuer) -> None:
    client = oidc_app.test_client()
    full_sign_in(client, issuer, "carol")
    user_id = session_user(oidc_app, client).id
    with oidc_app.app_context():
        user = User(id=user_id, name="Carol", username="carol", roles=frozenset())
        token = session_tokens.user_access_token(user)
        issuer.remember(token)
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["aud"] == "api://modelgate" and claims["roles"] == ["Score.Invoke"]
        # The test issuer's tokens live 120 s, inside MSAL's 5-minute renewal margin, so each
        # call renews with the (rotated) refresh token: this proves the rotated one was saved.
        second = session_tokens.user_access_token(user)
        issuer.remember(second)
        assert jwt.decode(second, options={"verify_signature": False})["sub"] == claims["sub"]
        store = session_tokens.identity_client().store
        raw = oidc_app.extensions["redis"].get(store.key(user_id))
        assert raw and b"access_token" not in raw and token.encode() not in raw  # encrypted
        assert 0 < oidc_app.extensions["redis"].ttl(store.key(user_id)) <= 10 * 3600

        # Drop the access token: MSAL renews it with the refresh token, silently.
        cache = store.load(user_id)
        for entry in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            cache.remove_at(entry)
        store.save(user_id, cache)
        renewed = session_tokens.user_access_token(user)
        issuer.remember(renewed)
        assert renewed != token

        store.delete(user_id)
        with pytest.raises(session_tokens.SignInRequired, match="sign in again"):
            session_tokens.user_access_token(user)
        with pytest.raises(session_tokens.SignInRequired):
            session_tokens.user_access_token(User(id=user_id, name="x", username="x",
                                                  roles=frozenset(), via="bearer"))


def test_logout_ends_panel_and_issuer_sessions(oidc_app: Any, issuer: Issuer) -> None:
    client = oidc_app.test_client()
    browser = issuer.session()
    full_sign_in(client, issuer, "bob", browser=browser)
    page = client.get("/").get_data(as_text=True)
    assert client.post("/auth/logout").status_code == 400  # no CSRF token: still signed in
    assert client.get("/").status_code == 200
    response = client.post("/auth/logout", data={"csrf_token": page_csrf(page)})
    assert response.status_code == 302
    target = urlsplit(response.headers["Location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{issuer.url}/logout"
    query = parse_qs(target.query)
    assert query["post_logout_redirect_uri"] == [f"{PANEL_URL}/auth/login"]
    assert query["client_id"] == ["modelgate-panel"] and query["id_token_hint"][0]
    assert client.get("/").status_code == 302  # the panel session is gone
    back = browser.get(response.headers["Location"], allow_redirects=False, timeout=10)
    assert back.status_code == 302 and back.headers["Location"] == f"{PANEL_URL}/auth/login"
    assert "You have signed out" in client.get("/auth/login").get_data(as_text=True)
    # The issuer forgot bob too: the next sign-in shows its form instead of a code.
    again = browser.get(start_login(client), allow_redirects=False, timeout=10)
    assert again.status_code == 200 and 'name="password"' in again.text


def _refused(client: Any, query: str, caplog: pytest.LogCaptureFixture, reason: str) -> str:
    with caplog.at_level(logging.WARNING, logger="app.auth.routes"):
        response = client.get(f"/auth/callback?{query}")
    assert response.status_code == 400
    assert any(reason in r.getMessage() for r in caplog.records), caplog.text
    assert client.get("/").status_code == 302  # nobody signed in
    return str(response.get_data(as_text=True))


def test_callback_without_a_flow_is_refused(oidc_app: Any, caplog: Any) -> None:
    page = _refused(oidc_app.test_client(), "code=abc&state=xyz", caplog, "without a pending")
    assert "Sign-in failed" in page and "Start again" in page


def test_callback_with_another_state_is_refused(oidc_app: Any, issuer: Issuer,
                                                caplog: Any) -> None:
    client = oidc_app.test_client()
    callback = issuer_redirect(issuer.session(), start_login(client), issuer, "alice")
    forged = callback.replace("state=", "state=x")
    _refused(client, forged.split("?", 1)[1], caplog, "without a pending")
    # The genuine answer still finds its own flow, and uses it up: it cannot be replayed.
    assert client.get(callback).status_code == 302
    client.post("/auth/logout", data={"csrf_token": page_csrf(
        client.get("/").get_data(as_text=True))})
    _refused(client, callback.split("?", 1)[1], caplog, "without a pending")


def _rewrite_pending(app: Any, client: Any, auth_uri: str, change: Any) -> None:
    """Apply `change` to the server-side record of the sign-in that `auth_uri` started."""
    from dataclasses import replace

    from app.auth.pending import binding_cookie

    state = parse_qs(urlsplit(auth_uri).query)["state"][0]
    binding = client.get_cookie(binding_cookie(False)).value
    with app.app_context():
        store = session_tokens.identity_client().pending
        pending = store.take(binding, state)
        assert pending is not None, "no pending sign-in on the server"
        store.put(binding, replace(pending, **change(pending)))


def test_the_pending_sign_in_lives_on_the_server_not_in_the_cookie(oidc_app: Any) -> None:
    client = oidc_app.test_client()
    auth_uri = start_login(client, "/jobs/")
    data = _session_data(oidc_app, client)
    assert not {"auth_flow", "auth_next", "auth_started"} & set(data)
    seen: list[Any] = []
    _rewrite_pending(oidc_app, client, auth_uri, lambda p: seen.append(p) or {})
    assert seen[0].next_url == "/jobs/" and seen[0].flow["code_verifier"]
    raw = [oidc_app.extensions["redis"].get(k)
           for k in oidc_app.extensions["redis"].scan_iter("modelgate:sign-in:*")]
    assert raw and not any(seen[0].flow["code_verifier"].encode() in blob for blob in raw)


def test_sign_in_survives_concurrent_responses_that_write_the_session(
        oidc_app: Any, issuer: Issuer) -> None:
    """Issue 16: the favicon's 404 page and an error page, requested with the first page load
    (no cookie yet), answer after "Sign in" was pressed; their session cookies, each with a
    fresh CSRF token, replace the browser's. The sign-in must still complete."""
    from concurrent.futures import ThreadPoolExecutor

    cookie = oidc_app.config["SESSION_COOKIE_NAME"]

    def in_flight(path: str) -> Any:
        return oidc_app.test_client().get(path, headers={"Accept": "text/html"})

    client = oidc_app.test_client()
    with ThreadPoolExecutor(max_workers=2) as pool:
        # both go out with the first page load, before the browser holds any session cookie
        late = [pool.submit(in_flight, "/no-such-page"),  # a 404 page
                pool.submit(in_flight, "/auth/logout")]  # an error page: 405 for a GET
        auth_uri = start_login(client, "/jobs/")
        answers = [f.result(timeout=30) for f in late]
    assert [a.status_code for a in answers] == [404, 405]
    for answer in answers:
        written = [h for h in answer.headers.getlist("Set-Cookie")
                   if h.startswith(cookie + "=")]
        assert written, "the concurrent response must write the session for this test to bite"
        # ...and it lands after the sign-in's redirect: the browser keeps the latest cookie
        client.set_cookie(cookie, written[0].split(";", 1)[0].split("=", 1)[1])
    callback = issuer_redirect(issuer.session(), auth_uri, issuer, "alice")
    response = client.get(callback)
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    assert response.headers["Location"] == "/jobs/"
    assert session_user(oidc_app, client).username == "alice"


def test_a_state_from_another_browser_is_refused(oidc_app: Any, issuer: Issuer,
                                                 caplog: Any) -> None:
    victim, attacker = oidc_app.test_client(), oidc_app.test_client()
    callback = issuer_redirect(issuer.session(), start_login(victim), issuer, "alice")
    # the attacker has the whole callback URL (code and state) but not the victim's cookie
    start_login(attacker)  # with a sign-in (and a binding cookie) of its own
    _refused(attacker, callback.split("?", 1)[1], caplog, "without a pending")
    assert attacker.get("/").status_code == 302
    # the victim's own sign-in is untouched by the attempt
    assert victim.get(callback).status_code == 302
    assert session_user(oidc_app, victim).username == "alice"


def test_favicon_is_served_without_touching_the_session(oidc_app: Any) -> None:
    response = oidc_app.test_client().get("/favicon.ico")
    assert response.status_code == 200
    assert response.mimetype == "image/vnd.microsoft.icon"
    assert response.data[:4] == b"\x00\x00\x01\x00"  # an ICO header
    assert not response.headers.getlist("Set-Cookie")


def test_provider_error_is_shown_not_ignored(oidc_app: Any, issuer: Issuer,
                                             caplog: Any) -> None:
    client = oidc_app.test_client()
    state = parse_qs(urlsplit(start_login(client)).query)["state"][0]
    page = _refused(client, f"error=access_denied&error_description=no&state={state}",
                    caplog, "provider error access_denied")
    assert "access_denied" in page
    state = parse_qs(urlsplit(start_login(client)).query)["state"][0]
    page = _refused(client, f"error=%3Cscript%3E&state={state}", caplog, "unexpected_error")
    assert "<script>" not in page


def test_a_stale_flow_is_refused(oidc_app: Any, issuer: Issuer, caplog: Any) -> None:
    client = oidc_app.test_client()
    auth_uri = start_login(client)
    callback = issuer_redirect(issuer.session(), auth_uri, issuer, "alice")
    _rewrite_pending(oidc_app, client, auth_uri, lambda p: {
        "started": p.started - session_tokens.FLOW_MAX_AGE_SECONDS - 1})
    _refused(client, callback.split("?", 1)[1], caplog, "pending flow expired")


def test_tampered_nonce_is_refused(oidc_app: Any, issuer: Issuer, caplog: Any) -> None:
    client = oidc_app.test_client()
    auth_uri = start_login(client)
    callback = issuer_redirect(issuer.session(), auth_uri, issuer, "alice")
    _rewrite_pending(oidc_app, client, auth_uri, lambda p: {
        "flow": {**p.flow, "nonce": "another-nonce"}})
    _refused(client, callback.split("?", 1)[1], caplog, "MSAL refused")


class _AttackerJWKS(SessionJWKClient):
    """Serves a JWKS where the issuer's kid maps to a key the attacker controls."""

    def __init__(self, real: SessionJWKClient, kid: str) -> None:
        super().__init__(real.uri, real._session)
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        self._doc = {"keys": [{**jwt.algorithms.RSAAlgorithm.to_jwk(key, as_dict=True),
                               "kid": kid, "use": "sig", "alg": "RS256"}]}

    def fetch_data(self) -> Any:
        return self._doc


def test_id_token_with_a_bad_signature_is_refused(oidc_app: Any, issuer: Issuer,
                                                  caplog: Any) -> None:
    client = oidc_app.test_client()
    callback = issuer_redirect(issuer.session(), start_login(client), issuer, "alice")
    with oidc_app.app_context():
        identity = session_tokens.identity_client()
        kid = issuer.jwks()["keys"][0]["kid"]
        identity.jwks = _AttackerJWKS(identity.jwks, kid)
    _refused(client, callback.split("?", 1)[1], caplog, "ID token rejected")


class _IdTokenRewriter(requests.adapters.HTTPAdapter):
    """Stands between the panel and the real token endpoint and spoils the ID token it returns.

    The spoiled token is re-signed with the issuer's own key (or an attacker's key), so only
    the panel's own checks of iss, aud, exp and the signature can catch it; MSAL does not.
    """

    def __init__(self, issuer: Issuer, defect: str) -> None:
        super().__init__()
        self.issuer, self.defect = issuer, defect

    def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        response = super().send(request, **kwargs)
        body = json.loads(response.content)
        claims = jwt.decode(body["id_token"], options={"verify_signature": False})
        now = int(time.time())
        claims.update({
            "wrong_iss": {"iss": self.issuer.url + "/"},
            "wrong_aud": {"aud": "modelgate-ci"},
            "expired": {"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600},
            "bad_signature": {},
        }[self.defect])
        doc = json.loads((self.issuer.home / "identity" / "keys.json").read_text())
        jwk = next(e["jwk"] for e in doc["keys"] if e["state"] == "active")
        key = jwt.PyJWK.from_dict(jwk, algorithm="RS256").key
        if self.defect == "bad_signature":
            from cryptography.hazmat.primitives.asymmetric import rsa

            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        body["id_token"] = jwt.encode(claims, key, algorithm="RS256",
                                      headers={"kid": jwk["kid"], "typ": "JWT"})
        response._content = json.dumps(body).encode()
        return response


@pytest.mark.parametrize("defect", ["wrong_iss", "wrong_aud", "expired", "bad_signature"])
def test_id_token_defects_are_refused_at_the_callback(oidc_app: Any, issuer: Issuer,
                                                      defect: str, caplog: Any) -> None:
    client = oidc_app.test_client()
    callback = issuer_redirect(issuer.session(), start_login(client), issuer, "alice")
    with oidc_app.app_context():
        identity = session_tokens.identity_client()
        identity.http.mount(f"{issuer.url}/token", _IdTokenRewriter(issuer, defect))
    _refused(client, callback.split("?", 1)[1], caplog, "ID token rejected")
