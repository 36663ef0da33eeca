"""Fixtures: a real issuer, a panel app pointed at it, and a sign-in driven like a browser."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import build_app
from tests.identity_support import Issuer, sign_in, start_issuer

PANEL_URL = "http://127.0.0.1:5555"


@pytest.fixture(scope="session")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    """One real issuer for the panel's sign-in tests."""
    with start_issuer(tmp_path_factory.mktemp("auth-home")) as running:
        yield running


@pytest.fixture
def oidc_app(issuer: Issuer, tmp_path: Path, redis_server: Any) -> Any:
    """The panel configured for the issuer; HOME is the issuer's, so the secret is read there."""
    return build_app(issuer.home, f"sqlite:///{tmp_path / 'panel.db'}", redis_server.url,
                     ISSUER_URL=issuer.url, PANEL_URL=PANEL_URL, CA_BUNDLE=str(issuer.ca))


def session_user(app: Any, client: Any) -> Any:
    """The user of the client's session, read from its server-side record (not the cookie)."""
    from app.auth.sessions import SID_KEY, session_store

    with client.session_transaction() as sess:
        session_id = sess[SID_KEY]
    record = session_store(app).get(session_id)
    assert record is not None, "no live session record"
    return record.user()


def placeholder(converter: Any) -> Any:
    """A value every URL converter accepts (the view then answers 404 for unknown ids)."""
    from werkzeug.routing import AnyConverter, FloatConverter, IntegerConverter, UUIDConverter

    if isinstance(converter, AnyConverter):
        return next(iter(converter.items))
    if isinstance(converter, FloatConverter):
        return 1.0
    if isinstance(converter, IntegerConverter):
        return 1
    if isinstance(converter, UUIDConverter):
        return "00000000-0000-4000-8000-000000000000"
    return "x"


def route_urls(app: Any, methods: tuple[str, ...]) -> list[tuple[Any, str, str]]:
    """(rule, method, url) for every registered rule and each of `methods` it allows."""
    found = []
    adapter = app.url_map.bind("localhost")
    for rule in app.url_map.iter_rules():
        values = {name: placeholder(conv) for name, conv in rule._converters.items()}
        for method in sorted(set(rule.methods or ()) & set(methods)):
            found.append((rule, method, adapter.build(rule.endpoint, values, method=method)))
    return found


def page_csrf(page: str) -> str:
    """The CSRF token of a rendered panel page."""
    match = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert match, "no CSRF token on the page"
    return match.group(1)


def start_login(client: Any, next_url: str = "/") -> str:
    """Press "Sign in" on the panel's login page; return the issuer URL it redirects to."""
    page = client.get(f"/auth/login?next={next_url}").get_data(as_text=True)
    response = client.post("/auth/login", data={"csrf_token": page_csrf(page),
                                                 "next": next_url})
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    return str(response.headers["Location"])


def issuer_redirect(browser: requests.Session, auth_uri: str, issuer: Issuer,
                    username: str) -> str:
    """Sign in at the issuer's form; return the panel callback path with its query."""
    answer = sign_in(browser, auth_uri, username, issuer.password(username))
    assert answer.status_code == 302, answer.text[:300]
    location = answer.headers["Location"]
    assert location.startswith(PANEL_URL + "/auth/callback?"), location
    parts = urlsplit(location)
    return f"{parts.path}?{parts.query}"


def full_sign_in(client: Any, issuer: Issuer, username: str, next_url: str = "/",
                 browser: requests.Session | None = None) -> Any:
    """Sign `username` in through the real issuer; return the panel's callback response."""
    browser = browser or issuer.session()
    callback = issuer_redirect(browser, start_login(client, next_url), issuer, username)
    return client.get(callback)
