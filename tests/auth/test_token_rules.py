"""One token rule set: the same table of Authorization headers against the gateway and the panel.

Tokens are signed with the real local issuer's keys (its keys.json); the gateway validates them
over HTTPS against the issuer's JWKS, the panel's /api/v1 with its own JWKS client. Each case
must be accepted by both (gateway 200, panel 200) or refused by both (401).
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from app.gateway.app import Gateway, create_gateway_app, server_ssl_context
from app.gateway.config import write_gateway_config
from app.gateway.state import GatewaySettings
from app.gateway.template import render_default_policy
from app.pki import ensure_tls
from tests.conftest import build_app
from tests.gateway.conftest import Backend, LoopThread, named
from tests.identity_support import Issuer
from tests.support import RedisServer

API = "api://modelgate"


@dataclass
class Sides:
    """The gateway and the panel, both trusting the same real issuer."""

    issuer: Issuer
    gateway_port: int
    gateway_ca: ssl.SSLContext
    panel: Any

    def gateway_status(self, values: list[str]) -> int:
        """POST a score call with these Authorization fields (one field per value)."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.gateway_port,
                                           context=self.gateway_ca, timeout=10)
        body = json.dumps({"data": [{"Age": 30}]}).encode()
        try:
            conn.putrequest("POST", "/credit-risk/score")
            for value in values:
                conn.putheader("Authorization", value)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            return conn.getresponse().status
        finally:
            conn.close()

    def panel_status(self, values: list[str]) -> int:
        """GET /api/v1/jobs with these Authorization fields."""
        headers = [("Authorization", value) for value in values]
        return int(self.panel.test_client().get("/api/v1/jobs", headers=headers).status_code)


@pytest.fixture(scope="module")
def sides(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sides]:
    """A gateway (default policy, real backend stub) and a panel app for the test issuer."""
    home = tmp_path_factory.mktemp("rules-home")
    redis = RedisServer(home / "redis").start()
    loop = LoopThread()
    gateway: Gateway | None = None
    backend = Backend(loop)
    try:
        config = {"apis": [{
            "name": "credit-risk", "path": "credit-risk", "revision": 1, "environment": "prod",
            "backend_url": "http://127.0.0.1:9",
            "operations": [{"id": "score", "method": "POST", "url_template": "/score"}],
            "policy_xml": render_default_policy(issuer=issuer.url, environment="prod",
                                                rate_limit=6000, clock_skew_s=30)}],
            "named_values": named(home, "prod", backend.url)}
        write_gateway_config(home, config)
        gateway = create_gateway_app(home, redis_url=redis.url,
                                     settings=GatewaySettings(ca_file=issuer.ca))
        port = loop.run(gateway.start("127.0.0.1", 0, server_ssl_context(home)))
        ca = ssl.create_default_context(cafile=str(ensure_tls(home).ca_cert))
        panel = build_app(issuer.home, f"sqlite:///{home / 'panel.db'}", redis.url,
                          ISSUER_URL=issuer.url, PANEL_URL="http://127.0.0.1:5555",
                          CA_BUNDLE=str(issuer.ca))
        yield Sides(issuer, port, ca, panel)
    finally:
        if gateway is not None:
            loop.run(gateway.stop(1.0))
        loop.run(backend._runner.cleanup())
        loop.stop()
        redis.stop()


def _signing_key(issuer: Issuer) -> tuple[str, Any]:
    """The issuer's active private key (published in its JWKS with alg RS256)."""
    doc = json.loads((Path(issuer.home) / "identity" / "keys.json").read_text())
    entry = next(e for e in doc["keys"] if e["state"] == "active")
    return entry["jwk"]["kid"], jwt.PyJWK.from_dict(entry["jwk"], algorithm="RS256").key


def mint(issuer: Issuer, *, alg: str = "RS256", header: dict[str, Any] | None = None,
         drop: tuple[str, ...] = (), **claims: Any) -> str:
    """An access token signed with the real issuer key, with chosen claims."""
    kid, key = _signing_key(issuer)
    now = int(time.time())
    body: dict[str, Any] = {"iss": issuer.url, "aud": API, "sub": "rules-sub", "oid": "rules",
                            "iat": now, "nbf": now, "exp": now + 300,
                            "roles": ["Score.Invoke"]}
    body.update(claims)
    for name in drop:
        body.pop(name)
    token: str = jwt.encode(body, key, algorithm=alg,
                            headers={"typ": "at+jwt", "kid": kid, **(header or {})})
    issuer.remember(token)
    return token


def _now() -> int:
    return int(time.time())


Case = Callable[[Issuer], list[str]]  # the Authorization field values to send
ACCEPT, REFUSE = True, False
CASES: list[tuple[str, Case, bool]] = [
    ("valid", lambda i: [f"Bearer {mint(i)}"], ACCEPT),
    ("scheme-lowercase", lambda i: [f"bearer {mint(i)}"], ACCEPT),
    ("scheme-uppercase", lambda i: [f"BEARER {mint(i)}"], ACCEPT),
    ("scheme-mixed-case", lambda i: [f"bEaReR {mint(i)}"], ACCEPT),
    ("exp-float", lambda i: [f"Bearer {mint(i, exp=_now() + 300.5)}"], ACCEPT),
    ("two-fields-same-token", lambda i: [f"Bearer {mint(i)}"] * 2, REFUSE),
    ("two-fields-valid-first", lambda i: [f"Bearer {mint(i)}", "Bearer junk"], REFUSE),
    ("two-fields-valid-second", lambda i: ["Bearer junk", f"Bearer {mint(i)}"], REFUSE),
    ("no-field", lambda i: [], REFUSE),
    ("scheme-basic", lambda i: ["Basic YWxpY2U6cHc="], REFUSE),
    ("no-scheme", lambda i: [mint(i)], REFUSE),
    ("exp-string", lambda i: [f"Bearer {mint(i, exp=str(_now() + 300))}"], REFUSE),
    ("exp-bool", lambda i: [f"Bearer {mint(i, exp=True)}"], REFUSE),
    ("nbf-string", lambda i: [f"Bearer {mint(i, nbf=str(_now()))}"], REFUSE),
    ("iat-string", lambda i: [f"Bearer {mint(i, iat=str(_now()))}"], REFUSE),
    ("iat-null", lambda i: [f"Bearer {mint(i, iat=None)}"], REFUSE),
    ("roles-string", lambda i: [f"Bearer {mint(i, roles='Score.Invoke')}"], REFUSE),
    ("roles-with-number", lambda i: [f"Bearer {mint(i, roles=['Score.Invoke', 7])}"], REFUSE),
    ("roles-nested", lambda i: [f"Bearer {mint(i, roles=[['Score.Invoke']])}"], REFUSE),
    ("sub-number", lambda i: [f"Bearer {mint(i, sub=42)}"], REFUSE),
    ("ps256-with-rs256-key", lambda i: [f"Bearer {mint(i, alg='PS256')}"], REFUSE),
    ("rs512", lambda i: [f"Bearer {mint(i, alg='RS512')}"], REFUSE),
    ("typ-jwt", lambda i: [f"Bearer {mint(i, header={'typ': 'JWT'})}"], REFUSE),
    ("expired", lambda i: [f"Bearer {mint(i, exp=_now() - 120)}"], REFUSE),
    ("no-exp", lambda i: [f"Bearer {mint(i, drop=('exp',))}"], REFUSE),
    ("wrong-audience", lambda i: [f"Bearer {mint(i, aud='api://other')}"], REFUSE),
]


@pytest.mark.parametrize(("case", "accepted"), [(c[1], c[2]) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_gateway_and_panel_apply_the_same_token_rules(sides: Sides, case: Case,
                                                      accepted: bool) -> None:
    """Both accept the case (200) or both refuse it (401)."""
    values = case(sides.issuer)
    expected = 200 if accepted else 401
    assert (sides.gateway_status(values), sides.panel_status(values)) == (expected, expected)
