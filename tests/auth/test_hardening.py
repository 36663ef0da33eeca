"""Session hardening: cookie flags, CSRF everywhere, security headers, open redirects, lifetime."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from app.auth.sessions import session_store
from app.security import safe_next
from tests.auth.conftest import PANEL_URL, full_sign_in, route_urls
from tests.conftest import build_app, csrf_headers, sign_in
from tests.identity_support import Issuer
from tests.support import RedisServer

# reliability-security.md §3.4 (Flask-Admin's is_safe_url list) and §3.6 #48.
OPEN_REDIRECTS = [
    "https://evil.com", "//evil.com", "/\\evil.com", "\\\\evil.com", "http:///evil.com",
    "javascript:alert(1)", " javascript:alert(1)", "javascrip\nt:alert(1)",
    "\\\\www.evil.com", "\\/www.evil.com", "/////www.evil.com", "http:///www.evil.com",
    "https:////www.evil.com", "http://127.0.0.1.evil.com/", "//127.0.0.1:5555@evil.com",
    "%2F%2Fevil.com", "/\t/evil.com", "evil.com", "",
]


@pytest.fixture
def production_app(issuer: Issuer, tmp_path: Path, redis_server: Any) -> Any:
    """The panel with its real (non-test) cookie settings, against the real issuer."""
    from app import create_app
    from app.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'panel.db'}"
    upgrade(url)
    return create_app({"HOME": str(issuer.home), "DATABASE_URL": url,
                       "REDIS_URL": redis_server.url, "SECRET_KEY": secrets.token_urlsafe(48),
                       "ISSUER_URL": issuer.url, "PANEL_URL": PANEL_URL,
                       "CA_BUNDLE": str(issuer.ca)})


def _session_cookie(response: Any) -> str:
    cookies = [c for c in response.headers.getlist("Set-Cookie")
               if c.startswith("__Host-session=")]
    assert len(cookies) == 1, response.headers.getlist("Set-Cookie")
    return str(cookies[0])


def test_session_cookie_flags_after_sign_in(production_app: Any, issuer: Issuer) -> None:
    client = production_app.test_client()
    response = full_sign_in(client, issuer, "alice")
    assert response.status_code == 302
    cookie = _session_cookie(response)
    attributes = {part.split("=", 1)[0].strip().lower(): part.split("=", 1)[-1].strip()
                  for part in cookie.split(";")[1:]}
    assert {"secure", "httponly"} <= set(attributes)
    assert attributes["samesite"] == "Lax" and attributes["path"] == "/"
    assert "domain" not in attributes
    lifetime = parsedate_to_datetime(attributes["expires"]).timestamp() - time.time()
    assert 8 * 3600 <= lifetime <= 12 * 3600
    # Nothing but the user's public facts: no token fits in the cookie's payload.
    assert len(cookie) < 1200
    assert client.get("/").status_code == 200
    headers = client.get("/", base_url="https://127.0.0.1").headers
    assert headers["Strict-Transport-Security"].startswith("max-age=31536000")


def test_absolute_session_lifetime(tmp_path: Path, redis_server: Any, sqlite_url: str) -> None:
    app = build_app(tmp_path, sqlite_url, redis_server.url)
    client = app.test_client()
    sign_in(client, "alice")
    assert client.get("/").status_code == 200
    with client.session_transaction() as sess:
        session_id = sess["sid"]
    store = session_store(app)
    record = store.get(session_id)
    assert record is not None
    signed_in_long_ago = replace(record, signed_in_at=time.time() - 10 * 3600 - 5)
    store.update(session_id, signed_in_long_ago)
    assert client.get("/").status_code == 302
    # Redis forgets the record by itself at the same moment.
    assert 10 * 3600 - 60 < app.extensions["redis"].ttl(store.key(session_id)) <= 10 * 3600


@pytest.fixture
def app(tmp_path: Path, redis_server: Any, sqlite_url: str) -> Any:
    return build_app(tmp_path, sqlite_url, redis_server.url)


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One app for the read-only checks below (they change nothing, so they can share)."""
    home = tmp_path_factory.mktemp("shared")
    server = RedisServer(home / "redis").start()
    try:
        yield build_app(home, f"sqlite:///{home / 'panel.db'}", server.url)
    finally:
        server.stop()


def _state_changing(app: Any) -> list[tuple[str, str]]:
    return [(method, url) for rule, method, url in route_urls(app, ("POST", "PUT", "PATCH",
                                                                      "DELETE"))
            if rule.endpoint != "auth.logout"]


@pytest.mark.parametrize("token", ["none", "other-session"])
def test_every_state_changing_route_needs_a_csrf_token(app: Any, token: str) -> None:
    client = app.test_client()
    sign_in(client, "dave")
    headers = {}
    if token == "other-session":
        other = app.test_client()
        sign_in(other, "dave")
        headers = csrf_headers(other)
    calls = _state_changing(app)
    assert ("POST", "/jobs/") in calls and ("POST", "/api/v1/jobs") in calls
    for method, url in calls:
        for body in ({"data": {"kind": "selfcheck"}}, {"json": {"kind": "selfcheck"}}):
            response = client.open(url, method=method, headers=headers,
                                   **body)  # type: ignore[arg-type]
            assert response.status_code == 400, (method, url, response.status_code)
    assert client.get("/api/v1/jobs").get_json()["jobs"] == []  # nothing was queued


def test_logout_needs_a_csrf_token(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "alice")
    assert client.post("/auth/logout").status_code == 400
    assert client.get("/").status_code == 200


def test_every_form_carries_a_csrf_token(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "dave")
    for page in ("/", "/jobs/"):
        html = client.get(page).get_data(as_text=True)
        forms = re.findall(r"<form\b[^>]*>.*?</form>", html, flags=re.S | re.I)
        posts = [f for f in forms if re.search(r'method="post"', f, flags=re.I)]
        assert posts, page
        assert all('name="csrf_token"' in f for f in posts), page


@pytest.mark.parametrize("path", ["/", "/auth/login", "/health", "/api/v1/openapi.json",
                                  "/nowhere", "/api/v1/jobs"])
def test_security_headers_on_every_kind_of_response(shared_app: Any, path: str) -> None:
    client = shared_app.test_client()
    sign_in(client, "erin")
    headers = client.get(path).headers
    csp = headers["Content-Security-Policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "object-src 'none'",
                      "base-uri 'none'", "frame-ancestors 'none'"):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] in ("same-origin", "no-referrer", "strict-origin")
    assert "charset=utf-8" in headers["Content-Type"] or "json" in headers["Content-Type"]
    assert "Strict-Transport-Security" not in headers  # plain http: HSTS means nothing here


@pytest.mark.parametrize("target", OPEN_REDIRECTS)
def test_open_redirects_are_refused(shared_app: Any, target: str) -> None:
    assert safe_next(target) == "/"
    client = shared_app.test_client()
    page = client.get("/auth/login", query_string={"next": target}).get_data(as_text=True)
    assert 'name="next" value="/"' in page
    sign_in(client, "alice")
    response = client.get("/auth/login", query_string={"next": target})
    assert response.status_code == 302 and response.headers["Location"] == "/"


@pytest.mark.parametrize("target", ["/jobs/", "/jobs/abc?status=FAILED", "/models/"])
def test_same_site_next_is_kept(shared_app: Any, target: str) -> None:
    client = shared_app.test_client()
    sign_in(client, "alice")
    response = client.get("/auth/login", query_string={"next": target})
    assert response.headers["Location"] == target


def test_login_post_keeps_only_a_safe_next(oidc_app: Any, issuer: Issuer) -> None:
    from app.auth.pending import binding_cookie
    from app.auth.session_tokens import identity_client
    from tests.auth.conftest import page_csrf

    client = oidc_app.test_client()
    csrf = page_csrf(client.get("/auth/login").get_data(as_text=True))
    assert client.post("/auth/login", data={"next": "/jobs/"}).status_code == 400  # CSRF
    for target, kept in (("//evil.com", "/"), ("/jobs/", "/jobs/")):
        response = client.post("/auth/login", data={"csrf_token": csrf, "next": target})
        location = response.headers["Location"]
        assert location.startswith(issuer.url + "/authorize?")
        state = parse_qs(urlsplit(location).query)["state"][0]
        binding = client.get_cookie(binding_cookie(False)).value
        with oidc_app.app_context():
            pending = identity_client().pending.take(binding, state)
        assert pending is not None and pending.next_url == kept
    assert full_sign_in(client, issuer, "alice", "//evil.com").headers["Location"] == "/"
