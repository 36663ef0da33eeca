"""Revocation at the real issuer: refresh tokens redeemed once, reuse kills the family, sign-out
ends browser sessions and refresh tokens."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import requests

from app.identity.store import IssuerStore, RefreshToken
from tests.identity.conftest import (
    REDIRECT_URI,
    Issuer,
    authorize_url,
    callback_params,
    pkce_pair,
    sign_in,
)
from tests.identity_support import sign_out


def _signed_in(issuer: Issuer, user: str,
               browser: requests.Session | None = None) -> dict[str, Any]:
    """Sign `user` in with the code flow as the panel client; return the token response."""
    verifier, challenge = pkce_pair()
    url = authorize_url(issuer, code_challenge=challenge, code_challenge_method="S256")
    params = callback_params(sign_in(browser or issuer.session(), url, user,
                                     issuer.password(user)))
    response = issuer.session().post(f"{issuer.url}/token", timeout=10, data={
        "grant_type": "authorization_code", "code": params["code"], "code_verifier": verifier,
        "redirect_uri": REDIRECT_URI, "client_id": "modelgate-panel",
        "client_secret": issuer.secret("modelgate-panel")})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    issuer.remember(params["code"], verifier, *body.values())
    return body


def _refresh(issuer: Issuer, refresh_token: str,
             session: requests.Session | None = None) -> requests.Response:
    response = (session or issuer.session()).post(f"{issuer.url}/token", timeout=10, data={
        "grant_type": "refresh_token", "refresh_token": refresh_token,
        "client_id": "modelgate-panel", "client_secret": issuer.secret("modelgate-panel")})
    if response.status_code == 200:
        issuer.remember(*response.json().values())
    return response


def test_parallel_redemptions_of_one_refresh_token_succeed_once(issuer: Issuer) -> None:
    token = _signed_in(issuer, "alice")["refresh_token"]
    sessions = [issuer.session() for _ in range(4)]
    for session in sessions:  # connect and handshake first, so the four posts really race
        session.get(f"{issuer.url}/health", timeout=10)
    start = threading.Barrier(len(sessions))
    answers: list[requests.Response] = []

    def redeem(session: requests.Session) -> None:
        start.wait()
        answers.append(_refresh(issuer, token, session))

    threads = [threading.Thread(target=redeem, args=(s,)) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(a.status_code for a in answers) == [200, 400, 400, 400]
    assert all(a.json()["error"] == "invalid_grant" for a in answers if a.status_code == 400)
    # The losers presented a used token: a reuse, so the winner's new token is revoked too.
    winner = next(a for a in answers if a.status_code == 200).json()["refresh_token"]
    assert _refresh(issuer, winner).json()["error"] == "invalid_grant"


def test_reuse_of_a_rotated_refresh_token_revokes_its_family(issuer: Issuer) -> None:
    first = _signed_in(issuer, "bob")["refresh_token"]
    other_family = _signed_in(issuer, "bob")["refresh_token"]
    second = _refresh(issuer, first).json()["refresh_token"]
    third = _refresh(issuer, second).json()["refresh_token"]
    reused = _refresh(issuer, first)  # an attacker replays the stolen, long-rotated token
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    assert _refresh(issuer, third).json()["error"] == "invalid_grant"  # the family is dead
    # Another sign-in of the same user is another family: it keeps working.
    assert _refresh(issuer, other_family).status_code == 200
    log = issuer.log.read_text()
    assert "refresh token reused: revoked its family (user=bob client=modelgate-panel)" in log


def test_signing_out_at_the_issuer_revokes_the_users_refresh_tokens(issuer: Issuer) -> None:
    browser = issuer.session()
    token = _signed_in(issuer, "carol", browser)["refresh_token"]
    elsewhere = _signed_in(issuer, "carol")["refresh_token"]  # carol in another browser
    someone_else = _signed_in(issuer, "erin")["refresh_token"]
    assert sign_out(browser, issuer.url).status_code == 200
    for revoked in (token, elsewhere):
        assert _refresh(issuer, revoked).json()["error"] == "invalid_grant"
    assert _refresh(issuer, someone_else).status_code == 200


def test_a_copied_issuer_cookie_is_dead_after_sign_out(issuer: Issuer) -> None:
    browser = issuer.session()
    _, challenge = pkce_pair()
    url = authorize_url(issuer, code_challenge=challenge, code_challenge_method="S256")
    issuer.remember(callback_params(sign_in(browser, url, "dave", issuer.password("dave")))
                    ["code"])
    thief = issuer.session()
    thief.cookies.update(browser.cookies)
    # While the session lives, a copy of the cookie signs in without a password.
    issuer.remember(callback_params(thief.get(url, allow_redirects=False, timeout=10))["code"])
    elsewhere = issuer.session()  # dave in another browser
    issuer.remember(callback_params(sign_in(elsewhere, url, "dave", issuer.password("dave")))
                    ["code"])
    assert sign_out(browser, issuer.url).status_code == 200
    for copy in (thief, elsewhere):
        again = copy.get(url, allow_redirects=False, timeout=10)
        assert again.status_code == 200 and 'name="password"' in again.text  # the form


def test_another_site_cannot_sign_a_user_out(issuer: Issuer) -> None:
    """A cross-site GET (an <img> pointing at /logout) only shows the confirmation page."""
    browser = issuer.session()
    token = _signed_in(issuer, "alice", browser)["refresh_token"]
    bob_hint = _signed_in(issuer, "bob")["id_token"]
    for params in ({}, {"post_logout_redirect_uri": "http://127.0.0.1:5555/auth/login",
                        "client_id": "modelgate-panel"}, {"id_token_hint": bob_hint}):
        page = browser.get(f"{issuer.url}/logout", params=params, timeout=10,
                           allow_redirects=False)
        assert page.status_code == 200 and "Sign out?" in page.text
        assert bob_hint not in page.text
    forged = browser.post(f"{issuer.url}/logout", timeout=10, allow_redirects=False,
                          data={"confirm": "yes", "csrf_token": "forged"})
    assert forged.status_code == 200 and "Sign out?" in forged.text
    _, challenge = pkce_pair()
    url = authorize_url(issuer, code_challenge=challenge, code_challenge_method="S256")
    issuer.remember(callback_params(browser.get(url, allow_redirects=False, timeout=10))["code"])
    token = _refresh(issuer, token).json()["refresh_token"]  # alice is still signed in
    # alice's own ID token as the hint is the application's sign-out: no question asked.
    alice_hint = _signed_in(issuer, "alice", browser)["id_token"]
    out = browser.get(f"{issuer.url}/logout", timeout=10, allow_redirects=False, params={
        "id_token_hint": alice_hint, "post_logout_redirect_uri": "http://127.0.0.1:5555/auth/login"})
    assert out.status_code == 302
    assert _refresh(issuer, token).json()["error"] == "invalid_grant"


def test_a_token_rotated_into_a_revoked_family_is_born_revoked(tmp_path: Any) -> None:
    """The race the lock cannot order: a reuse revokes the family before the winner's insert."""
    store = IssuerStore(tmp_path / "issuer.db")
    family = store.save_refresh_token("t1", RefreshToken("", "c", "u", "openid", 1), 60)
    assert store.redeem_refresh_token("t1", "c") is not None
    assert store.redeem_refresh_token("t1", "c") is None  # reuse: the family is revoked
    store.save_refresh_token("t2", RefreshToken("", "c", "u", "openid", 1, family), 60)
    assert store.redeem_refresh_token("t2", "c") is None
    assert store.redeem_refresh_token("t1", "other-client") is None
    store.close()


def test_a_database_from_before_families_is_upgraded(tmp_path: Any) -> None:
    path = tmp_path / "issuer.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE refresh_tokens (digest TEXT PRIMARY KEY, client_id TEXT NOT NULL, "
                "username TEXT NOT NULL, scope TEXT NOT NULL, auth_time INTEGER NOT NULL, "
                "expires_at REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0)")
    old.commit()
    old.close()
    store = IssuerStore(path)
    store.save_refresh_token("t1", RefreshToken("", "c", "u", "openid", 1), 60)
    found = store.redeem_refresh_token("t1", "c")
    assert found is not None and found.username == "u" and found.family
    store.close()
