"""Issue 15, Entra ID: the default policy rendered for Entra accepts both audience forms Entra
puts in access tokens (``api://<app id>`` and the bare application id) and only the tenant's
v2 issuer, on the real local gateway (the same XML API Management runs)."""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from aiohttp import web

from app.gateway.app import server_ssl_context
from app.gateway.config import write_gateway_config
from app.gateway.template import ISSUER_URL_NAME, ISSUER_URL_REF
from app.services.apis import issuer_settings, render_policy
from tests.gateway.conftest import LoopThread, SigningKey, Stack, free_port, start_site

TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
APP_ID = "6e9a3c1f-0b5d-4c8e-9f2a-7d1b3e5c9a70"
ENTRA = {"IDENTITY": "entra", "TENANT_ID": TENANT, "API_CLIENT_ID": APP_ID}


class EntraLikeIssuer:
    """A tenant's endpoints laid out as Entra ID lays them out (``/<tenant>/v2.0`` discovery,
    ``/<tenant>/discovery/v2.0/keys``), served over the stack's TLS with a key the test holds."""

    def __init__(self, loop: LoopThread, stack: Stack) -> None:
        self.key = SigningKey("entra-" + uuid.uuid4().hex[:8])
        base = f"https://127.0.0.1:{free_port()}"
        self.v2 = f"{base}/{TENANT}/v2.0"
        self.v1 = f"{base}/{TENANT}/"  # the v1 form, as https://sts.windows.net/<tenant>/
        keys_url = f"{base}/{TENANT}/discovery/v2.0/keys"

        async def discovery(request: web.Request) -> web.Response:
            return web.json_response({"issuer": self.v2, "jwks_uri": keys_url})

        async def keys(request: web.Request) -> web.Response:
            return web.json_response({"keys": [self.key.jwk()]})

        app = web.Application()
        app.router.add_get(f"/{TENANT}/v2.0/.well-known/openid-configuration", discovery)
        app.router.add_get(f"/{TENANT}/discovery/v2.0/keys", keys)
        port = int(base.rsplit(":", 1)[1])
        self._loop = loop
        self._runner, _ = loop.run(start_site(app, port, server_ssl_context(stack.home)))

    def mint(self, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"iss": self.v2, "aud": APP_ID, "sub": "sub-" + uuid.uuid4().hex,
                                "oid": uuid.uuid4().hex, "roles": ["Score.Invoke"],
                                "exp": now + 300, "iat": now, "nbf": now}
        body.update(claims)
        return jwt.encode(body, self.key.private, algorithm="RS256",
                          headers={"kid": self.key.kid, "typ": "at+jwt"})

    def stop(self) -> None:
        self._loop.run(self._runner.cleanup())


@pytest.fixture
def entra(stack: Stack) -> Iterator[EntraLikeIssuer]:
    """The stack serving an API ``entra`` (prod's backend) with the policy rendered for Entra,
    recorded as publishing records it (issuer by name, both audiences)."""
    issuer = EntraLikeIssuer(stack.loop, stack)
    config = copy.deepcopy(stack.config)
    config["apis"].append({
        "name": "entra", "path": "entra", "revision": 1, "environment": "prod",
        "backend_url": "http://127.0.0.1:9",
        "operations": [{"id": "score", "method": "POST", "url_template": "/score"}],
        "policy_xml": render_policy(ENTRA, "prod", rate_limit=1000),
        "issuer": ISSUER_URL_REF, "audiences": list(issuer_settings(ENTRA).audiences)})
    config["named_values"][ISSUER_URL_NAME] = {"secret": False, "value": issuer.v2}
    try:
        write_gateway_config(stack.home, config)
        deadline = time.monotonic() + 2
        while stack.score(None, "entra/score").status_code == 404 and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        yield issuer
    finally:
        write_gateway_config(stack.home, stack.config)
        deadline = time.monotonic() + 2
        while stack.score(None, "entra/score").status_code != 404 and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        issuer.stop()


def test_the_entra_policy_lists_both_audiences_and_names_the_issuer() -> None:
    settings = issuer_settings(ENTRA)
    assert settings.issuer == f"https://login.microsoftonline.com/{TENANT}/v2.0"
    assert settings.audiences == (f"api://{APP_ID}", APP_ID)
    policy = render_policy(ENTRA, "prod", rate_limit=1000)
    block = (f"<audiences>\n        <audience>api://{APP_ID}</audience>\n"
             f"        <audience>{APP_ID}</audience>\n      </audiences>")
    assert policy.count(block) == 2  # the 401 check and the role check
    assert policy.count(f"<issuer>{ISSUER_URL_REF}</issuer>") == 2
    assert "sts.windows.net" not in policy and "login.microsoftonline.com" not in policy
    # the local issuer's policy is unchanged: one audience
    local = render_policy({"IDENTITY": "local", "ISSUER_URL": "https://127.0.0.1:8443/local"},
                          "prod", rate_limit=1000)
    assert local.count("<audience>") == 2 and "<audience>api://modelgate</audience>" in local


def test_both_audience_forms_pass_and_a_v1_issuer_is_refused(
        stack: Stack, entra: EntraLikeIssuer) -> None:
    for audience in (f"api://{APP_ID}", APP_ID):
        resp = stack.score(entra.mint(aud=audience), "entra/score")
        assert resp.status_code == 200, (audience, resp.text)
    assert stack.score(entra.mint(iss=entra.v1, aud=APP_ID), "entra/score").status_code == 401
    assert stack.score(entra.mint(iss=entra.v1, aud=f"api://{APP_ID}"),
                       "entra/score").status_code == 401
    assert stack.score(entra.mint(aud="api://modelgate"), "entra/score").status_code == 401
    assert stack.score(entra.mint(aud="00000000-0000-0000-0000-000000000001"),
                       "entra/score").status_code == 401
    assert stack.score(entra.mint(roles=["MLOps.Engineer"]), "entra/score").status_code == 403
    # the other APIs keep their own issuer
    assert stack.score(stack.issuer.mint()).status_code == 200
