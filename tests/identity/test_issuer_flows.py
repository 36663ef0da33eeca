"""End-to-end flows against a real issuer process: MSAL, the sign-in form, PKCE, rotation."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import jwt
import msal
import pytest
import requests

from app.identity import KeyRotationError, rotate_keys
from tests.identity.conftest import (
    REDIRECT_URI,
    Issuer,
    authorize_url,
    callback_params,
    form_post_params,
    pkce_pair,
    post_form,
    sign_in,
    verify_with_jwks,
)
from tests.identity_support import sign_out

API = "api://modelgate"


def ci_app(issuer: Issuer, secret: str | None = None) -> msal.ConfidentialClientApplication:
    """MSAL as the CI client, exactly as the CI client does (app/client.py)."""
    return msal.ConfidentialClientApplication(
        "modelgate-ci", client_credential=secret or issuer.secret("modelgate-ci"),
        oidc_authority=issuer.url, http_client=issuer.session(),
    )


def panel_app(issuer: Issuer) -> msal.ConfidentialClientApplication:
    """MSAL as the panel (confidential client with a loopback redirect URI)."""
    return msal.ConfidentialClientApplication(
        "modelgate-panel", client_credential=issuer.secret("modelgate-panel"),
        oidc_authority=issuer.url, http_client=issuer.session(),
    )


def ci_token(issuer: Issuer) -> str:
    """A fresh client-credentials access token for modelgate-ci."""
    result = ci_app(issuer).acquire_token_for_client([f"{API}/.default"])
    assert "access_token" in result, result
    token: str = result["access_token"]
    issuer.remember(token)
    return token


def test_discovery_issuer_matches_url(issuer: Issuer) -> None:
    response = issuer.session().get(f"{issuer.url}/.well-known/openid-configuration",
                                    timeout=5)
    doc = response.json()
    assert doc["issuer"] == issuer.url
    assert doc["jwks_uri"] == f"{issuer.url}/jwks"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert set(doc["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic", "client_secret_post"}
    assert "max-age" in response.headers["Cache-Control"]


def test_client_credentials_token_matches_design(issuer: Issuer) -> None:
    token = ci_token(issuer)
    claims = verify_with_jwks(token, issuer.jwks(), audience=API, issuer=issuer.url,
                              typ="at+jwt")
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert sorted(claims["roles"]) == ["MLOps.Engineer", "Score.Invoke"]
    assert claims["azp"] == claims["appid"] == "modelgate-ci"
    assert claims["sub"] == claims["oid"] and claims["jti"]
    assert claims["nbf"] <= time.time() < claims["exp"] <= claims["iat"] + 120


def test_client_credentials_needs_dot_default(issuer: Issuer) -> None:
    result = ci_app(issuer).acquire_token_for_client([f"{API}/Score.Invoke"])
    assert result.get("error") == "invalid_scope"


def test_bad_client_secret_refused(issuer: Issuer) -> None:
    result = ci_app(issuer, "not-the-secret-but-long-enough").acquire_token_for_client(
        [f"{API}/.default"])
    assert result.get("error") == "invalid_client" and "access_token" not in result
    response = issuer.session().post(
        f"{issuer.url}/token", auth=("modelgate-ci", "wrong-secret-wrong-secret"),
        data={"grant_type": "client_credentials", "scope": f"{API}/.default"}, timeout=5)
    assert response.status_code == 401


def test_client_secret_basic_accepted(issuer: Issuer) -> None:
    response = issuer.session().post(
        f"{issuer.url}/token", auth=("modelgate-ci", issuer.secret("modelgate-ci")),
        data={"grant_type": "client_credentials", "scope": f"{API}/.default"}, timeout=5)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    issuer.remember(response.json()["access_token"])


def _msal_sign_in(issuer: Issuer, user: str) -> tuple[msal.ConfidentialClientApplication,
                                                      dict[str, Any], dict[str, Any]]:
    app = panel_app(issuer)
    flow = app.initiate_auth_code_flow([f"{API}/Score.Invoke"], redirect_uri=REDIRECT_URI,
                                       response_mode="form_post")
    browser = issuer.session()
    params = form_post_params(sign_in(browser, flow["auth_uri"], user, issuer.password(user)))
    issuer.remember(params["code"], flow["code_verifier"])
    result = app.acquire_token_by_auth_code_flow(flow, params)
    assert "access_token" in result, result
    issuer.remember(result["access_token"], result["id_token"], result["refresh_token"])
    return app, flow, result


def test_auth_code_flow_with_msal(issuer: Issuer) -> None:
    app, flow, result = _msal_sign_in(issuer, "alice")
    jwks = issuer.jwks()
    id_claims = verify_with_jwks(result["id_token"], jwks, audience="modelgate-panel",
                                 issuer=issuer.url, typ="JWT")
    assert id_claims["nonce"] == hashlib.sha256(flow["nonce"].encode()).hexdigest()
    assert id_claims["preferred_username"] == "alice" and id_claims["name"] == "Alice"
    assert sorted(id_claims["roles"]) == ["MLOps.Engineer", "Score.Invoke"]
    assert id_claims["sub"] == id_claims["oid"]
    at = verify_with_jwks(result["access_token"], jwks, audience=API, issuer=issuer.url,
                          typ="at+jwt")
    assert at["scp"] == "Score.Invoke" and at["azp"] == "modelgate-panel"
    assert at["sub"] == id_claims["sub"] and "Score.Invoke" in at["roles"]
    # Refresh through MSAL's cache (refresh token grant, rotated refresh token).
    account = app.get_accounts()[0]
    refreshed = app.acquire_token_silent_with_error(
        [f"{API}/Score.Invoke"], account, force_refresh=True)
    assert refreshed and "access_token" in refreshed, refreshed
    issuer.remember(refreshed["access_token"], refreshed.get("refresh_token"))
    assert refreshed["access_token"] != result["access_token"]
    verify_with_jwks(refreshed["access_token"], jwks, audience=API, issuer=issuer.url,
                     typ="at+jwt")


def test_refresh_token_is_single_use(issuer: Issuer) -> None:
    _, _, result = _msal_sign_in(issuer, "bob")
    form = {"grant_type": "refresh_token", "refresh_token": result["refresh_token"],
            "client_id": "modelgate-panel", "client_secret": issuer.secret("modelgate-panel")}
    first = issuer.session().post(f"{issuer.url}/token", data=form, timeout=5)
    assert first.status_code == 200 and first.json()["refresh_token"]
    body = first.json()
    issuer.remember(body["access_token"], body["refresh_token"], body["id_token"])
    id_claims = verify_with_jwks(body["id_token"], issuer.jwks(), audience="modelgate-panel",
                                 issuer=issuer.url, typ="JWT")
    assert id_claims["preferred_username"] == "bob" and "nonce" not in id_claims
    assert id_claims["auth_time"] <= time.time()
    second = issuer.session().post(f"{issuer.url}/token", data=form, timeout=5)
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"


def test_userinfo_and_logout(issuer: Issuer) -> None:
    _, _, result = _msal_sign_in(issuer, "carol")
    s = issuer.session()
    info = s.get(f"{issuer.url}/userinfo", timeout=5,
                 headers={"Authorization": f"Bearer {result['access_token']}"})
    assert info.status_code == 200 and info.json()["preferred_username"] == "carol"
    bad = s.get(f"{issuer.url}/userinfo", headers={"Authorization": "Bearer x.y.z"}, timeout=5)
    assert bad.status_code == 401
    loopback = s.get(f"{issuer.url}/logout", allow_redirects=False, timeout=5, params={
        "id_token_hint": result["id_token"], "post_logout_redirect_uri": "http://127.0.0.1:5555/"})
    assert loopback.status_code == 400 and "Location" not in loopback.headers  # unregistered
    other = s.get(f"{issuer.url}/logout", allow_redirects=False, timeout=5, params={
        "id_token_hint": result["id_token"], "client_id": "modelgate-ci",
        "post_logout_redirect_uri": "http://127.0.0.1:5555/auth/login"})
    assert other.status_code == 400 and "Location" not in other.headers  # hint names another
    out = s.get(f"{issuer.url}/logout", allow_redirects=False, timeout=5, params={
        "id_token_hint": result["id_token"], "state": "s1",
        "post_logout_redirect_uri": "http://127.0.0.1:5555/auth/login"})
    assert out.status_code == 302
    assert out.headers["Location"] == "http://127.0.0.1:5555/auth/login?state=s1"
    evil = s.get(f"{issuer.url}/logout", allow_redirects=False, timeout=5, params={
        "client_id": "modelgate-panel", "post_logout_redirect_uri": "https://evil.example/"})
    assert evil.status_code == 400 and "Location" not in evil.headers


def test_session_sso_and_logout_ends_it(issuer: Issuer) -> None:
    browser = issuer.session()
    verifier, challenge = pkce_pair()
    url = authorize_url(issuer, code_challenge=challenge, code_challenge_method="S256")
    callback_params(sign_in(browser, url, "dave", issuer.password("dave")))
    again = browser.get(url, allow_redirects=False, timeout=5)  # signed in: straight back
    issuer.remember(callback_params(again)["code"])
    assert sign_out(browser, issuer.url).status_code == 200
    assert browser.get(url, allow_redirects=False, timeout=5).status_code == 200  # the form


def test_wrong_password_refused_then_throttled(issuer: Issuer) -> None:
    browser = issuer.session()
    verifier, challenge = pkce_pair()
    url = authorize_url(issuer, code_challenge=challenge, code_challenge_method="S256")
    statuses = []
    for attempt in range(3):
        response = sign_in(browser, url, "erin", f"wrong-password-{attempt}")
        statuses.append(response.status_code)
        assert "Location" not in response.headers
    assert statuses == [401, 401, 429]
    assert "Too many failed sign-ins" in response.text
    locked = sign_in(browser, url, "erin", issuer.password("erin"))
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) >= 1
    time.sleep(2.2)  # MODELGATE_IDP_LOCKOUT_SECONDS=2 in the test issuer
    params = callback_params(sign_in(browser, url, "erin", issuer.password("erin")))
    issuer.remember(params["code"])


def test_pkce_required_at_authorize(issuer: Issuer) -> None:
    browser = issuer.session()
    for extra in ({}, {"code_challenge": pkce_pair()[1], "code_challenge_method": "plain"},
                  {"code_challenge": pkce_pair()[1]}):
        response = browser.get(authorize_url(issuer, **extra), allow_redirects=False, timeout=5)
        assert response.status_code == 302
        assert "error=invalid_request" in response.headers["Location"]


def test_prompt_none_without_session_returns_login_required(issuer: Issuer) -> None:
    _, challenge = pkce_pair()
    url = authorize_url(issuer, code_challenge=challenge, code_challenge_method="S256",
                        prompt="none")
    response = issuer.session().get(url, allow_redirects=False, timeout=5)
    assert response.status_code == 302 and "error=login_required" in response.headers["Location"]


def _code(issuer: Issuer, user: str = "alice") -> tuple[str, str]:
    verifier, challenge = pkce_pair()
    url = authorize_url(issuer, code_challenge=challenge, code_challenge_method="S256")
    params = callback_params(sign_in(issuer.session(), url, user, issuer.password(user)))
    issuer.remember(params["code"], verifier)
    return params["code"], verifier


def _redeem(issuer: Issuer, code: str, verifier: str | None) -> requests.Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "client_id": "modelgate-panel", "client_secret": issuer.secret("modelgate-panel")}
    if verifier is not None:
        form["code_verifier"] = verifier
    response = issuer.session().post(f"{issuer.url}/token", data=form, timeout=5)
    if response.status_code == 200:
        body = response.json()
        issuer.remember(body["access_token"], body.get("id_token"), body.get("refresh_token"))
    return response


@pytest.mark.parametrize("verifier", [None, "wrong-verifier-" + "x" * 40])
def test_pkce_verifier_required_and_checked(issuer: Issuer, verifier: str | None) -> None:
    code, _ = _code(issuer)
    response = _redeem(issuer, code, verifier)
    assert response.status_code == 400
    assert response.json()["error"] in ("invalid_request", "invalid_grant")


def test_code_is_single_use(issuer: Issuer) -> None:
    code, verifier = _code(issuer)
    assert _redeem(issuer, code, verifier).status_code == 200
    again = _redeem(issuer, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_key_rotation_keeps_old_tokens_and_new_ones_valid_at_once(issuer: Issuer) -> None:
    jwks_before = issuer.jwks()
    old = ci_token(issuer)
    old_kid = jwt.get_unverified_header(old)["kid"]
    result = rotate_keys(issuer.home, force=True)
    assert old_kid in result.retired_kids
    new = ci_token(issuer)
    new_kid = jwt.get_unverified_header(new)["kid"]
    assert new_kid == result.signing_kid != old_kid
    # The new signer was pre-published: a verifier holding the old JWKS accepts it at once.
    assert new_kid in {k["kid"] for k in jwks_before["keys"]}
    verify_with_jwks(new, jwks_before, audience=API, issuer=issuer.url, typ="at+jwt")
    jwks_after = issuer.jwks()
    assert {old_kid, new_kid, result.next_kid} <= {k["kid"] for k in jwks_after["keys"]}
    verify_with_jwks(old, jwks_after, audience=API, issuer=issuer.url, typ="at+jwt")
    with pytest.raises(KeyRotationError):
        rotate_keys(issuer.home)  # the fresh next key is younger than the JWKS max-age


def test_sign_in_form_rejects_missing_csrf_token(issuer: Issuer) -> None:
    browser = issuer.session()
    verifier, challenge = pkce_pair()
    url = authorize_url(issuer, code_challenge=challenge, code_challenge_method="S256")
    page = browser.get(url, timeout=5)
    forged = page.text.replace('name="csrf_token" value="', 'name="csrf_token" value="x')
    page._content = forged.encode()  # noqa: SLF001 - reuse the form parser on a tampered page
    response = post_form(browser, page, "alice", issuer.password("alice"))
    assert response.status_code == 400 and "Location" not in response.headers
    assert "Content-Security-Policy" in response.headers
