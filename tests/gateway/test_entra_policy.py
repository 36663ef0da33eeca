"""Issue 15, Entra ID: the default policy rendered for Entra accepts both audience forms Entra
puts in access tokens (``api://<app id>`` and the bare application id) and only the tenant's
v2 issuer, on the real local gateway (the same XML API Management runs). Entra's access tokens
carry ``typ: JWT`` (not RFC 9068's ``at+jwt``): an API published for Entra records that type and
the gateway takes it there only; the local issuer's APIs, and documents published before the
type was recorded, keep requiring ``at+jwt``."""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import jwt
import pytest
from aiohttp import web

from app.gateway.app import server_ssl_context
from app.gateway.config import ConfigError, check_api, write_gateway_config
from app.gateway.policy import UnsafePolicy
from app.gateway.template import ISSUER_URL_NAME, ISSUER_URL_REF
from app.services.apis import identity_rules, issuer_settings, render_policy
from tests.gateway.conftest import AUD, LoopThread, SigningKey, Stack, free_port, start_site

TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
APP_ID = "6e9a3c1f-0b5d-4c8e-9f2a-7d1b3e5c9a70"
ENTRA = {"IDENTITY": "entra", "TENANT_ID": TENANT, "API_CLIENT_ID": APP_ID}
#: Before publishing recorded the access-token type: issuer and audiences only.
BEFORE_TYPE = ("issuer", "audiences")


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

    def mint(self, typ: str = "JWT", **claims: Any) -> str:
        """An access token as Entra ID issues them (``typ: JWT``), claims overridable."""
        now = int(time.time())
        body: dict[str, Any] = {"iss": self.v2, "aud": APP_ID, "sub": "sub-" + uuid.uuid4().hex,
                                "oid": uuid.uuid4().hex, "roles": ["Score.Invoke"],
                                "exp": now + 300, "iat": now, "nbf": now}
        body.update(claims)
        return jwt.encode(body, self.key.private, algorithm="RS256",
                          headers={"kid": self.key.kid, "typ": typ})

    def stop(self) -> None:
        self._loop.run(self._runner.cleanup())


def api_document(name: str, identity: Mapping[str, Any],
                 rules: Mapping[str, Any]) -> dict[str, Any]:
    """An API of prod's backend with the default policy for ``identity`` and these rules."""
    return {"name": name, "path": name, "revision": 1, "environment": "prod",
            "backend_url": "http://127.0.0.1:9",
            "operations": [{"id": "score", "method": "POST", "url_template": "/score"}],
            "policy_xml": render_policy(identity, "prod", rate_limit=1000), **rules}


@contextmanager
def serving(stack: Stack, apis: list[dict[str, Any]], issuer_url: str) -> Iterator[None]:
    """The stack's gateway serving these APIs as well, ``{{issuer-url}}`` set to issuer_url."""
    config = copy.deepcopy(stack.config)
    config["apis"] += apis
    config["named_values"][ISSUER_URL_NAME] = {"secret": False, "value": issuer_url}
    paths = [f"{api['path']}/score" for api in apis]
    try:
        write_gateway_config(stack.home, config)
        deadline = time.monotonic() + 2
        while any(stack.score(None, p).status_code == 404 for p in paths) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        yield
    finally:
        write_gateway_config(stack.home, stack.config)
        deadline = time.monotonic() + 2
        while any(stack.score(None, p).status_code != 404 for p in paths) and \
                time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture
def entra(stack: Stack) -> Iterator[EntraLikeIssuer]:
    """The stack serving the API ``entra`` with the policy rendered for Entra, recorded as
    publishing records it (issuer by name, both audiences, typ JWT), and ``entra-old``, the same
    API as recorded before publishing recorded the type."""
    issuer = EntraLikeIssuer(stack.loop, stack)
    rules = identity_rules(ENTRA)
    before = {key: rules[key] for key in BEFORE_TYPE}
    try:
        with serving(stack, [api_document("entra", ENTRA, rules),
                             api_document("entra-old", ENTRA, before)], issuer.v2):
            yield issuer
    finally:
        issuer.stop()


@pytest.fixture
def local(stack: Stack) -> Iterator[None]:
    """The stack serving the API ``local``, published for the local issuer (the stack's)."""
    config = {"IDENTITY": "local", "ISSUER_URL": stack.issuer.url}
    with serving(stack, [api_document("local", config, identity_rules(config))],
                 stack.issuer.url):
        yield


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
    # publishing records the typ each issuer's access tokens carry
    assert identity_rules(ENTRA)["access_token_type"] == "JWT"
    assert identity_rules({"IDENTITY": "local"})["access_token_type"] == "at+jwt"


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


def test_entra_access_tokens_pass_an_api_published_for_entra(
        stack: Stack, entra: EntraLikeIssuer) -> None:
    """typ JWT is what Entra ID issues; at+jwt is not, and the panel refuses it too."""
    assert stack.score(entra.mint(), "entra/score").status_code == 200
    assert stack.score(entra.mint(typ="jwt"), "entra/score").status_code == 200
    for typ in ("at+jwt", "application/at+jwt", "JWS", ""):
        assert stack.score(entra.mint(typ=typ), "entra/score").status_code == 401, typ


def test_an_api_published_for_the_local_issuer_refuses_typ_jwt(
        stack: Stack, local: None) -> None:
    """The local issuer's rule is not loosened: its APIs take at+jwt only (RFC 9068)."""
    for path in ("local/score", "credit-risk/score"):  # as published now; the stack's own
        assert stack.score(stack.issuer.mint(), path).status_code == 200, path
        assert stack.score(stack.issuer.mint(headers={"typ": "application/at+jwt"}),
                           path).status_code == 200, path
        resp = stack.score(stack.issuer.mint(headers={"typ": "JWT"}), path)
        assert resp.status_code == 401, path
        assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_a_document_published_before_the_type_was_recorded_requires_at_jwt(
        stack: Stack, entra: EntraLikeIssuer) -> None:
    """No migration: an API document without access_token_type keeps requiring at+jwt."""
    assert stack.score(entra.mint(), "entra-old/score").status_code == 401
    assert stack.score(entra.mint(typ="at+jwt"), "entra-old/score").status_code == 200


def test_typ_jwt_is_recorded_only_with_an_entra_issuer(stack: Stack) -> None:
    """A document recording JWT for the local issuer is refused (publishing fails, the gateway
    answers 503 for it); a type that is neither is a configuration error."""
    config = {"IDENTITY": "local", "ISSUER_URL": stack.issuer.url}
    forged = api_document("forged", config, {**identity_rules(config),
                                             "access_token_type": "JWT"})
    data = copy.deepcopy(stack.config)
    data["apis"].append(forged)
    data["named_values"][ISSUER_URL_NAME] = {"secret": False, "value": stack.issuer.url}
    with pytest.raises(UnsafePolicy, match="access_token_type 'JWT'"):
        check_api(stack.home, data, "forged")
    with serving(stack, [forged], stack.issuer.url):
        resp = stack.score(stack.issuer.mint(headers={"typ": "JWT"}, aud=AUD), "forged/score")
        assert resp.status_code == 503
        assert stack.score(stack.issuer.mint(), "credit-risk/score").status_code == 200
    for bad in ("jwt+at", "", 1, None):
        data["apis"][-1] = {**forged, "access_token_type": bad}
        with pytest.raises(ConfigError, match="access_token_type must be one of"):
            check_api(stack.home, data, "forged")
