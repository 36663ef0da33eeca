"""Route-by-role matrix: every registered rule and method, for anonymous and each DESIGN role.

A view decides who may call it with `role_required` / `signed_in` (which store
`required_roles` on the view) or by being on the PUBLIC allow-list below. A route with neither
fails this test, so every new blueprint must make the decision explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Rule

from app.auth.roles import has_role
from tests.auth.conftest import route_urls
from tests.conftest import USERS, build_app, csrf_headers, sign_in

#: Endpoints anyone may call, each with the reason.
PUBLIC = {
    "static": "CSS and JavaScript",
    "favicon": "the browser's tab icon (a static file)",
    "dashboard.health": "liveness probe",
    "api.openapi": "the API description",
    "auth.login": "the sign-in page",
    "auth.start": "starts sign-in (CSRF-protected)",
    "auth.callback": "the identity provider's redirect (state/PKCE/nonce checked)",
    "auth.logout": "signing out needs no role (CSRF-protected)",
}
#: Public endpoints that are safe to call offline; the others talk to the identity provider
#: and are covered by tests/auth/test_signin.py.
PUBLIC_PROBES = {"dashboard.health", "api.openapi", "auth.login", "favicon"}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@pytest.fixture
def app(tmp_path: Path, redis_server: Any, sqlite_url: str) -> Any:
    return build_app(tmp_path, sqlite_url, redis_server.url, SSE_MAX_SECONDS=0.1)


def _routes(app: Any) -> list[tuple[Rule, str, str]]:
    """(rule, method, url) for every registered rule and method, with placeholder arguments."""
    return route_urls(app, METHODS)


def _call(client: Any, method: str, url: str, headers: dict[str, str]) -> Any:
    response = client.open(url, method=method, headers=headers,
                           json={} if url.startswith("/api/") and method != "GET" else None)
    response.close()  # live streams end here
    return response


def undecided_routes(app: Any) -> list[str]:
    """Rules whose view neither declares required roles nor is allow-listed as public."""
    return sorted(
        f"{','.join(sorted(rule.methods or ()))} {rule.rule} ({rule.endpoint})"
        for rule in app.url_map.iter_rules()
        if rule.endpoint not in PUBLIC
        and getattr(app.view_functions[rule.endpoint], "required_roles", None) is None)


def test_every_route_has_an_access_decision(app: Any) -> None:
    undecided = undecided_routes(app)
    assert not undecided, ("routes without role_required/signed_in and not on the public "
                           "allow-list: " + "; ".join(undecided))
    stale = set(PUBLIC) - {rule.endpoint for rule in app.url_map.iter_rules()}
    assert not stale, f"allow-listed endpoints that no longer exist: {stale}"


def test_anonymous_is_sent_to_sign_in_or_gets_401(app: Any) -> None:
    client = app.test_client()
    headers = {"X-CSRFToken": _login_page_csrf(client)}
    problems = []
    for rule, method, url in _routes(app):
        if rule.endpoint in PUBLIC:
            if rule.endpoint in PUBLIC_PROBES and method == "GET":
                status = _call(client, method, url, headers).status_code
                if status != 200:
                    problems.append(f"{method} {url}: public but {status}")
            continue
        response = _call(client, method, url, headers)
        if url.startswith("/api/"):
            ok = response.status_code == 401 and "Bearer" in response.headers.get(
                "WWW-Authenticate", "")
        else:
            ok = (response.status_code == 302
                  and response.headers["Location"].startswith("/auth/login?next="))
        if not ok:
            problems.append(f"{method} {url}: {response.status_code}")
    assert not problems, problems


def _login_page_csrf(client: Any) -> str:
    import re

    page = client.get("/auth/login").get_data(as_text=True)
    match = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert match
    return match.group(1)


def role_problems(app: Any, username: str) -> tuple[list[str], int]:
    """Walk every protected route as `username`; return what went wrong and how many ran."""
    client = app.test_client()
    sign_in(client, username)
    headers = csrf_headers(client)
    roles = frozenset(USERS[username])
    problems, checked = [], 0
    for rule, method, url in _routes(app):
        if rule.endpoint in PUBLIC:
            continue
        required = getattr(app.view_functions[rule.endpoint], "required_roles", None)
        if required is None:
            continue  # reported by test_every_route_has_an_access_decision
        allowed = not required or has_role(roles, *required)
        response = _call(client, method, url, headers)
        checked += 1
        status = response.status_code
        if allowed:
            to_login = status == 302 and "/auth/login" in response.headers.get("Location", "")
            if status in (401, 403) or to_login or status == 500:
                problems.append(f"{method} {url}: allowed for {username} but {status}")
        elif status != 403:
            problems.append(f"{method} {url}: {username} lacks {required} but got {status}")
        elif not all(str(r) in response.get_data(as_text=True) for r in required):
            problems.append(f"{method} {url}: the 403 does not name the missing role")
    return problems, checked


@pytest.mark.parametrize("username", sorted(USERS))
def test_each_role_reaches_exactly_what_it_may(app: Any, username: str) -> None:
    problems, checked = role_problems(app, username)
    assert checked, "no protected routes found"
    assert not problems, problems


def test_the_matrix_catches_undecided_and_unenforced_routes(tmp_path: Path, redis_server: Any,
                                                            sqlite_url: str) -> None:
    from flask import Blueprint

    from app.auth.roles import Role
    from app.auth.users import role_required

    probe = Blueprint("probe", __name__, url_prefix="/probe")

    @probe.post("/approve/<item>")
    @role_required(Role.APPROVER)
    def approve(item: str) -> Any:
        return {"approved": item}

    @probe.get("/forgotten")
    def forgotten() -> Any:
        return "anyone"

    def leaky() -> Any:
        return "claims a role, checks nothing"

    leaky.required_roles = (Role.ADMIN,)  # type: ignore[attr-defined]
    probe.add_url_rule("/leaky", view_func=leaky)
    app = build_app(tmp_path, sqlite_url, redis_server.url, SSE_MAX_SECONDS=0.1)
    app.register_blueprint(probe)
    assert [r for r in undecided_routes(app) if "probe" in r] == [
        "GET,HEAD,OPTIONS /probe/forgotten (probe.forgotten)"]
    problems, _ = role_problems(app, "alice")
    assert [p for p in problems if "probe" in p] == [
        "GET /probe/leaky: alice lacks (<Role.ADMIN: 'MLOps.Admin'>,) but got 200"]
    assert not [p for p in role_problems(app, "bob")[0] if "approve" in p]


def test_get_on_a_state_changing_url_is_405(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "dave")
    adapter = app.url_map.bind("localhost")
    for rule, method, url in _routes(app):
        if method == "GET" or rule.endpoint in PUBLIC:
            continue
        try:
            adapter.match(url, method="GET")
        except MethodNotAllowed:
            assert client.get(url).status_code == 405, url
        except NotFound:
            pass
