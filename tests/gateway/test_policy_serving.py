"""Issue 13, the gateway's policies, against the real gateway: an unsafe stored policy is not
served (503, logged without the secret) while every other API keeps working."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from app.gateway.config import write_gateway_config
from tests.gateway.conftest import BACKEND_KEY, Stack, api_entry

X_DEBUG = ('<outbound><base /><set-header name="X-Debug"><value>{{prod-backend-key}}</value>'
           "</set-header>")
KEY_ONLY = ('<policies><inbound><set-header name="Authorization" exists-action="override">'
            "<value>Bearer {{prod-backend-key}}</value></set-header></inbound></policies>")


def extra_api(stack: Stack, name: str, policy_xml: str | None = None,
              **fields: Any) -> dict[str, Any]:
    """A prod API at /<name>/score, with the default policy unless given one."""
    entry = api_entry("prod", name, stack.issuer)
    entry["name"] = name
    if policy_xml is not None:
        entry["policy_xml"] = policy_xml
    entry.update(fields)
    return entry


@contextmanager
def serving(stack: Stack, *apis: dict[str, Any]) -> Iterator[None]:
    """The stack's config plus these APIs, written the way publishing writes it."""
    config = copy.deepcopy(stack.config)
    config["apis"] += list(apis)
    path = f"{apis[0]['path']}/score"
    try:
        write_gateway_config(stack.home, config)
        deadline = time.monotonic() + 2
        while stack.score(None, path).status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield
    finally:
        write_gateway_config(stack.home, stack.config)
        deadline = time.monotonic() + 2
        while stack.score(None, path).status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.05)


def assert_refused(resp: Any) -> None:
    """The gateway's 503 for an API whose policy it refused, without the key."""
    assert resp.status_code == 503, resp.text
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert "refused its policy" in resp.json()["detail"]
    assert BACKEND_KEY not in resp.text and BACKEND_KEY not in str(resp.headers)


def test_13_a_policy_returning_the_backend_key_is_not_served(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    """The default policy plus an outbound set-header of the key: 503 for it, 200 elsewhere."""
    caplog.set_level("INFO")
    leaky = extra_api(stack, "debug")
    leaky["policy_xml"] = leaky["policy_xml"].replace("<outbound>\n    <base />", X_DEBUG, 1)
    assert X_DEBUG in leaky["policy_xml"]
    with serving(stack, leaky):
        before = len(stack.backend.seen)
        resp = stack.score(stack.issuer.mint(), "debug/score")
        assert_refused(resp)
        assert "X-Debug" not in resp.headers
        assert len(stack.backend.seen) == before  # the key was not even sent
        assert stack.score(stack.issuer.mint()).status_code == 200
    logged = [r.getMessage() for r in caplog.records if "refuses to serve" in r.getMessage()]
    assert any("'debug'" in m and "outbound/set-header[@name='X-Debug']" in m and
               "prod-backend-key" in m for m in logged), logged
    assert BACKEND_KEY not in caplog.text


def test_13_a_policy_sending_the_key_elsewhere_is_not_served(stack: Stack) -> None:
    """set-backend-service to an unlisted host: 503; listed in allowed_backends: forwarded."""
    other = f"127.0.0.1:{stack.issuer.port}"  # an https server that is not prod's backend
    redirect = f'<set-backend-service base-url="https://{other}" />\n    <set-header'
    elsewhere = extra_api(stack, "elsewhere")
    elsewhere["policy_xml"] = elsewhere["policy_xml"].replace(
        '<set-backend-service base-url="{{prod-backend-url}}" />\n    <!--', "<!--", 1).replace(
        "<set-header", redirect, 1)
    assert f"https://{other}" in elsewhere["policy_xml"]
    with serving(stack, elsewhere):
        assert_refused(stack.score(stack.issuer.mint(), "elsewhere/score"))
    listed = dict(elsewhere, allowed_backends=[other])
    with serving(stack, listed):
        # the issuer stub has no /score: its 404 shows the call went to the listed host
        assert stack.score(stack.issuer.mint(), "elsewhere/score").status_code == 404


def test_13_an_anonymous_policy_is_served_only_when_declared(stack: Stack) -> None:
    """No validate-jwt (or one without the role check): 503 unless the API is anonymous."""
    with serving(stack, extra_api(stack, "open", KEY_ONLY)):
        assert_refused(stack.score(None, "open/score"))
    weak = extra_api(stack, "weak")
    weak["policy_xml"] = weak["policy_xml"].replace(
        '<claim name="roles" match="any">', '<claim name="roles" match="any"><value>Any</value>')
    with serving(stack, weak):
        assert_refused(stack.score(stack.issuer.mint(roles=["Any"]), "weak/score"))
    declared = extra_api(stack, "open", KEY_ONLY, anonymous=True, backend_url=stack.backend.url)
    with serving(stack, declared):
        assert stack.score(None, "open/score").status_code == 200
        assert stack.backend.seen[-1]["Authorization"] == f"Bearer {BACKEND_KEY}"


def test_13_header_injection_through_a_policy_is_not_served(stack: Stack) -> None:
    """An outbound set-header value with &#13;&#10; never becomes a Set-Cookie line: 503."""
    injecting = extra_api(stack, "inject")
    injecting["policy_xml"] = injecting["policy_xml"].replace(
        "<outbound>\n    <base />", '<outbound><base /><set-header name="X-A"><value>1&#13;&#10;'
                                    "Set-Cookie: session=evil</value></set-header>", 1)
    assert "Set-Cookie" in injecting["policy_xml"]
    with serving(stack, injecting):
        resp = stack.score(stack.issuer.mint(), "inject/score")
        assert_refused(resp)
        assert "Set-Cookie" not in resp.headers and "X-A" not in resp.headers
