"""In-process tests: credentials file, redirect rules, throttle, key rotation, page hardening."""

from __future__ import annotations

import json
import logging
import re
import stat
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.identity import ensure_dev_credentials, rotate_keys
from app.identity.app import create_app
from app.identity.credentials import load_directory, redirect_uri_matches
from app.identity.keys import KeyStore, ensure_keys
from app.identity.settings import IssuerSettings
from app.identity.throttle import SignInThrottle
from tests.identity.conftest import pkce_pair

BASE = "https://127.0.0.1:8443"


def test_dev_credentials_shape_and_mode(tmp_path: Path) -> None:
    path = ensure_dev_credentials(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert {u: e["roles"] for u, e in doc["users"].items()} == {
        "alice": ["MLOps.Engineer", "Score.Invoke"], "bob": ["MLOps.Approver", "Score.Invoke"],
        "carol": ["Score.Invoke"], "dave": ["MLOps.Admin", "Score.Invoke"], "erin": []}
    assert all(len(e["password"]) >= 16 for e in doc["users"].values())
    assert doc["clients"]["modelgate-ci"]["roles"] == ["MLOps.Engineer", "Score.Invoke"]
    panel = doc["clients"]["modelgate-panel"]
    assert panel["roles"] == [] and panel["redirect_uris"] == ["http://127.0.0.1/auth/callback"]
    assert panel["post_logout_redirect_uris"] == ["http://127.0.0.1/auth/login"]
    assert len(panel["secret"]) >= 32
    # A second start keeps the file; a file without the panel client gains one.
    assert ensure_dev_credentials(tmp_path).read_text() == path.read_text()
    del doc["clients"]["modelgate-panel"]
    path.write_text(json.dumps(doc))
    ensure_dev_credentials(tmp_path)
    again = json.loads(path.read_text())
    assert again["users"] == doc["users"] and "modelgate-panel" in again["clients"]


def test_directory_hashes_and_authenticates(tmp_path: Path) -> None:
    doc = json.loads(ensure_dev_credentials(tmp_path).read_text())
    directory = load_directory(tmp_path)
    password = doc["users"]["alice"]["password"]
    assert directory.authenticate("alice", password) is not None
    assert directory.authenticate("alice", password + "x") is None
    assert directory.authenticate("mallory", password) is None
    assert password not in repr(directory.users["alice"])
    ci = directory.clients["modelgate-ci"]
    assert ci.check_client_secret(doc["clients"]["modelgate-ci"]["secret"])
    assert not ci.check_client_secret("é" * 10)


@pytest.mark.parametrize(("presented", "ok"), [
    ("http://127.0.0.1:5000/auth/callback", True),
    ("http://127.0.0.1:61234/auth/callback", True),
    ("http://127.0.0.1/auth/callback", True),
    ("http://127.0.0.1:5000/auth/callback/../x", False),
    ("http://127.0.0.1:5000/other", False),
    ("https://evil.example/auth/callback", False),
    ("http://127.0.0.1@evil.example/auth/callback", False),
    ("http://evil.example#@127.0.0.1/auth/callback", False),
    ("http://127.0.0.1:5000/auth/callback#frag", False),
    ("javascript:alert(1)//127.0.0.1/auth/callback", False),
])
def test_loopback_redirect_port_variance(presented: str, ok: bool) -> None:
    assert redirect_uri_matches("http://127.0.0.1/auth/callback", presented) is ok


def test_throttle_backs_off_exponentially() -> None:
    throttle = SignInThrottle(threshold=3, base_seconds=10, cap_seconds=35)
    t = 1000.0
    assert [throttle.record_failure("Bob", "1.2.3.4", t) for _ in range(2)] == [0, 0]
    assert throttle.record_failure("bob", "1.2.3.4", t) == 10
    assert throttle.retry_after("BOB", "1.2.3.4", t + 5) == 5
    assert throttle.retry_after("bob", "5.6.7.8", t) == 0  # per username and IP
    assert throttle.record_failure("bob", "1.2.3.4", t + 11) == 20
    assert throttle.record_failure("bob", "1.2.3.4", t + 40) == 35  # capped
    throttle.record_success("bob", "1.2.3.4")
    assert throttle.retry_after("bob", "1.2.3.4", t + 41) == 0


def test_throttle_slows_password_spraying_from_one_ip() -> None:
    throttle = SignInThrottle(threshold=3, base_seconds=10, cap_seconds=60)
    t = 1000.0
    locks = [throttle.record_failure(f"user{i}", "6.6.6.6", t) for i in range(12)]
    assert locks[:11] == [0] * 11 and locks[11] == 10  # 12 = 3 × 4 failures from the IP
    assert throttle.retry_after("someone-else", "6.6.6.6", t + 1) == 9
    assert throttle.retry_after("someone-else", "7.7.7.7", t + 1) == 0


def test_rotation_publishes_first_and_retires_after_grace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELGATE_IDP_ACCESS_TOKEN_TTL", "600")
    monkeypatch.setenv("MODELGATE_IDP_ID_TOKEN_TTL", "600")
    grace = 600 + 300
    state = tmp_path / "identity"
    t0 = time.time()
    ensure_keys(state, now=t0)
    keys = KeyStore(state, grace)
    first_signer = keys.signing_key().kid
    published = {k["kid"] for k in keys.jwks(now=t0)["keys"]}
    assert len(published) == 2 and first_signer in published
    step = rotate_keys(tmp_path, now=t0 + 120)
    assert step.signing_kid in published  # was pre-published as the next key
    assert keys.signing_key().kid == step.signing_kid
    assert first_signer in {k["kid"] for k in keys.jwks(now=t0 + 120 + grace - 1)["keys"]}
    assert first_signer not in {k["kid"] for k in keys.jwks(now=t0 + 120 + grace + 1)["keys"]}
    later = rotate_keys(tmp_path, now=t0 + 120 + grace + 200)
    assert first_signer not in later.retired_kids
    assert step.signing_kid in later.retired_kids
    assert stat.S_IMODE((state / "keys.json").stat().st_mode) == 0o600


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    """An in-process issuer app (no server) on a temporary home."""
    home = tmp_path_factory.mktemp("unit-home")
    return create_app(IssuerSettings(home=home, port=8443, max_failed_signins=50))


def _authorize_query(**extra: str) -> str:
    _, challenge = pkce_pair()
    params = {"client_id": "modelgate-panel", "response_type": "code",
              "redirect_uri": "http://127.0.0.1:5005/auth/callback", "scope": "openid",
              "state": "st", "code_challenge": challenge, "code_challenge_method": "S256"}
    params.update(extra)
    return "/local/authorize?" + urlencode(params)


def test_signin_page_headers(app: Flask) -> None:
    response = app.test_client().get(_authorize_query(), base_url=BASE)
    assert response.status_code == 200
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    assert "base-uri 'none'" in csp and "script-src" not in csp
    assert "form-action 'self' http://127.0.0.1:5005" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert response.headers["Cache-Control"] == "no-store"
    assert "<script" not in response.get_data(as_text=True)


@pytest.mark.parametrize("extra", [
    {"client_id": "nobody"},
    {"redirect_uri": "https://evil.example/auth/callback"},
    {"client_id": "modelgate-ci"},
])
def test_bad_client_or_redirect_never_redirects(app: Flask, extra: dict[str, str]) -> None:
    response = app.test_client().get(_authorize_query(**extra), base_url=BASE)
    assert response.status_code in (302, 400)
    location = response.headers.get("Location", "")
    assert "evil.example" not in location
    if extra.get("client_id") != "modelgate-ci":
        assert response.status_code == 400 and not location


@pytest.mark.parametrize(("target", "status"), [
    ("http://127.0.0.1:5005/auth/login", 302),
    ("http://127.0.0.1:5005/", 400),  # loopback, but not the address the panel registered
    ("http://localhost:5005/bye", 400),
    ("https://evil.example/", 400),
    ("javascript:alert(1)", 400),
    ("//evil.example/", 400),
])
def test_logout_redirects_only_to_the_clients_registered_addresses(app: Flask, target: str,
                                                                    status: int) -> None:
    response = app.test_client().get("/local/logout?" + urlencode(
        {"post_logout_redirect_uri": target, "client_id": "modelgate-panel"}), base_url=BASE)
    assert response.status_code == status
    if status == 400:
        assert "Location" not in response.headers
    else:
        assert response.headers["Location"] == target


@pytest.mark.parametrize(("extra", "status"), [
    ({}, 200),  # nobody to return to: the signed-out page
    ({"client_id": "nobody"}, 400),
    ({"client_id": "modelgate-ci"}, 400),  # a known client, but it registered no such address
    ({"id_token_hint": "not.a.token"}, 400),
])
def test_logout_without_a_known_client_never_redirects(app: Flask, extra: dict[str, str],
                                                       status: int) -> None:
    query = {"post_logout_redirect_uri": "http://127.0.0.1:5005/auth/login", **extra}
    response = app.test_client().get("/local/logout?" + urlencode(query), base_url=BASE)
    assert response.status_code == status and "Location" not in response.headers
    assert "You are signed out" in response.get_data(as_text=True)


def test_old_credentials_get_the_panels_post_logout_address(tmp_path: Path) -> None:
    path = ensure_dev_credentials(tmp_path)
    doc = json.loads(path.read_text())
    del doc["clients"]["modelgate-panel"]["post_logout_redirect_uris"]
    path.write_text(json.dumps(doc))
    ensure_dev_credentials(tmp_path)
    panel = load_directory(tmp_path).clients["modelgate-panel"]
    assert panel.post_logout_redirect_uris == ("http://127.0.0.1/auth/login",)
    assert panel.check_post_logout_redirect_uri("http://127.0.0.1:5000/auth/login")


def _sign_in(client: FlaskClient, password: str) -> tuple[int, str]:
    query = _authorize_query()
    page = client.get(query, base_url=BASE).get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)[1]  # type: ignore[index]
    response = client.post(query, base_url=BASE, headers={"Referer": BASE + query},
                           data={"csrf_token": token, "username": "bob", "password": password})
    return response.status_code, response.headers.get("Location", "")


def test_session_cookie_flags_and_no_secrets_in_logs(
        app: Flask, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    home = Path(app.extensions["modelgate.identity"].settings.home)
    password = json.loads((home / "dev-credentials.json").read_text())["users"]["bob"]["password"]
    client = app.test_client()
    assert _sign_in(client, "wrong-" + password)[0] == 401
    status, location = _sign_in(client, password)
    assert status == 302 and location.startswith("http://127.0.0.1:5005/auth/callback?code=")
    cookie = client.get_cookie("__Host-modelgate-idp", domain="127.0.0.1")
    assert cookie is not None and cookie.secure and cookie.http_only
    assert cookie.same_site == "Lax" and cookie.path == "/"
    code = location.split("code=")[1].split("&")[0]
    assert "sign-in failed" in caplog.text and "signed in: user=bob" in caplog.text
    for secret in (password, code):
        assert secret not in caplog.text


def test_csrf_missing_gives_400(app: Flask) -> None:
    response = app.test_client().post(_authorize_query(), base_url=BASE,
                                      data={"username": "bob", "password": "x"})
    assert response.status_code == 400 and "Location" not in response.headers
