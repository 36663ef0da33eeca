"""Real parts for the gateway tests: Redis, an HTTPS issuer with JWKS, a backend stub, tokens."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jwt
import pytest
import redis
import requests
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from app.gateway.app import Gateway, create_gateway_app, server_ssl_context
from app.gateway.config import encrypt_named_value, write_gateway_config
from app.gateway.jwt import JwksSettings
from app.gateway.state import GatewaySettings
from app.gateway.template import render_default_policy
from app.pki import ensure_tls

T = TypeVar("T")
AUD = "api://modelgate"
BACKEND_KEY = "backend-key-" + secrets.token_urlsafe(32)


def free_port() -> int:
    """A free loopback port (tiny race accepted; servers fail fast on bind errors)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopThread:
    """An asyncio loop in a daemon thread, to host the servers next to synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 30) -> T:
        """Run a coroutine on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Stop the loop."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


async def start_site(app: web.Application, port: int = 0,
                     ssl_ctx: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    """Start an app on 127.0.0.1 and return its runner and port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_ctx)
    await site.start()
    sock = site._server.sockets[0]  # type: ignore[union-attr]
    return runner, int(sock.getsockname()[1])


@dataclass
class SigningKey:
    """An RSA key the test controls."""

    kid: str
    private: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwk(self) -> dict[str, Any]:
        """The public JWK."""
        data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        data.update({"kid": self.kid, "use": "sig"})
        return dict(data)


class Issuer:
    """A real HTTPS discovery + JWKS server whose keys and availability the test controls."""

    def __init__(self, loop: LoopThread, home: Path) -> None:
        self._loop = loop
        self._ssl = server_ssl_context(home)
        self.keys: list[SigningKey] = [SigningKey("k1-" + uuid.uuid4().hex[:8])]
        self.hits = 0
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}/local"
        self._runner: web.AppRunner | None = None
        self.start()

    def _app(self) -> web.Application:
        async def discovery(request: web.Request) -> web.Response:
            self.hits += 1
            return web.json_response({"issuer": self.url, "jwks_uri": f"{self.url}/jwks"})

        async def jwks(request: web.Request) -> web.Response:
            return web.json_response({"keys": [k.jwk() for k in self.keys]})

        app = web.Application()
        app.router.add_get("/local/.well-known/openid-configuration", discovery)
        app.router.add_get("/local/jwks", jwks)
        return app

    def start(self) -> None:
        """Listen (again) on the same port."""
        self._runner, _ = self._loop.run(start_site(self._app(), self.port, self._ssl))

    def stop(self) -> None:
        """Go down: connections are refused."""
        if self._runner is not None:
            self._loop.run(self._runner.cleanup())
            self._runner = None

    def mint(self, key: SigningKey | None = None, *, alg: str = "RS256",
             headers: dict[str, Any] | None = None, drop: tuple[str, ...] = (),
             **claims: Any) -> str:
        """A signed access token (overrides via keyword claims; drop removes claims)."""
        key = key or self.keys[0]
        now = int(time.time())
        body: dict[str, Any] = {"iss": self.url, "aud": AUD, "sub": "sub-" + uuid.uuid4().hex,
                                "oid": uuid.uuid4().hex, "roles": ["Score.Invoke"],
                                "exp": now + 300, "iat": now, "nbf": now}
        body.update(claims)
        for name in drop:
            body.pop(name, None)
        hdr = {"kid": key.kid, "typ": "at+jwt"}
        hdr.update(headers or {})
        return jwt.encode(body, key.private, algorithm=alg, headers=hdr)


class Backend:
    """A backend stub on loopback that records the headers it receives."""

    def __init__(self, loop: LoopThread) -> None:
        self.seen: list[dict[str, str]] = []

        async def score(request: web.Request) -> web.Response:
            self.seen.append(dict(request.headers))
            await request.read()
            return web.json_response({"predictions": [{"label": "good"}],
                                      "model": {"name": "german-credit", "version": "3"}},
                                     headers={"Connection": "keep-alive", "X-Backend": "stub"})

        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(3)
            return web.json_response({})

        async def leak(request: web.Request) -> web.Response:
            return web.json_response({"echo": request.headers.get("Authorization", "")})

        app = web.Application()
        app.router.add_post("/score", score)
        app.router.add_post("/slow", slow)
        app.router.add_post("/leak", leak)
        self._runner, self.port = loop.run(start_site(app))
        self.url = f"http://127.0.0.1:{self.port}"


class Listener:
    """A plain TCP listener counting connections (to prove no outbound fetch happens)."""

    def __init__(self) -> None:
        self.hits = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.hits += 1
            conn.close()

    def close(self) -> None:
        """Stop listening."""
        self._sock.close()


@dataclass
class Stack:
    """Everything a gateway test needs."""

    home: Path
    loop: LoopThread
    issuer: Issuer
    rot_issuer: Issuer
    down_issuer: Issuer
    kid_issuer: Issuer
    backend: Backend
    url: str
    ca: str
    config: dict[str, Any]
    app: Gateway
    redis_url: str

    def session(self) -> requests.Session:
        """A client session trusting the local CA."""
        s = requests.Session()
        s.verify = self.ca
        s.trust_env = False
        return s

    def score(self, token: str | None = None, path: str = "credit-risk/score", *,
              auth: str | None = None, **kw: Any) -> requests.Response:
        """POST a score request with a bearer token (or a raw Authorization value)."""
        headers = dict(kw.pop("headers", {}))
        if auth is not None:
            headers["Authorization"] = auth
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return requests.post(f"{self.url}/{path}", json={"data": [{"Age": 30}]},
                             headers=headers, verify=self.ca, timeout=10, **kw)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server on a random port with a password, verified to be ours (R15)."""
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    port, password = free_port(), secrets.token_urlsafe(16)
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--requirepass",
                             password, "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError("redis-server exited (port taken?)")
            try:
                info = client.info("server")
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert info["process_id"] == proc.pid, "another Redis answered on our port"
        yield f"redis://:{password}@127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def api_entry(env: str, path: str, issuer: Issuer, *, template: str = "/score",
              rate: int = 6000, skew: int = 30) -> dict[str, Any]:
    """One API revision using the default policy template."""
    return {"name": "credit-risk", "path": path, "revision": 1, "environment": env,
            "backend_url": "http://127.0.0.1:9", "operations": [
                {"id": "score", "method": "POST", "url_template": template}],
            "policy_xml": render_default_policy(issuer=issuer.url, environment=env,
                                                rate_limit=rate, clock_skew_s=skew)}


def feature_apis(issuer: Issuer) -> list[dict[str, Any]]:
    """APIs exercising cors, check-header, set-header, outbound/on-error, return-response."""
    jwt_step = (f'<validate-jwt header-name="Authorization" require-scheme="Bearer">'
                f'<openid-config url="{issuer.url}/.well-known/openid-configuration" />'
                f"<audiences><audience>{AUD}</audience></audiences><required-claims>"
                '<claim name="roles" match="any"><value>Score.Invoke</value></claim>'
                "</required-claims></validate-jwt>")
    features = (
        "<policies><inbound><base />"
        "<cors><allowed-origins><origin>https://panel.local</origin></allowed-origins>"
        '<allowed-methods preflight-result-max-age="300"><method>POST</method></allowed-methods>'
        "<allowed-headers><header>Authorization</header><header>Content-Type</header>"
        "</allowed-headers><expose-headers><header>X-Request-ID</header></expose-headers></cors>"
        '<check-header name="X-Tenant" failed-check-httpcode="403" '
        'failed-check-error-message="Wrong tenant." ignore-case="true"><value>contoso</value>'
        f"</check-header>{jwt_step}"
        '<set-backend-service base-url="{{prod-backend-url}}" />'
        '<set-header name="Authorization" exists-action="override">'
        "<value>Bearer {{prod-backend-key}}</value></set-header>"
        '<set-header name="X-Added" exists-action="append"><value>policy</value></set-header>'
        '<set-header name="X-Strip" exists-action="delete" />'
        '</inbound><outbound><set-header name="X-Backend" exists-action="delete" />'
        '<set-header name="X-Outbound" exists-action="override"><value>1</value></set-header>'
        '</outbound><on-error><set-header name="X-Error" exists-action="override">'
        "<value>yes</value></set-header></on-error></policies>")
    teapot = ('<policies><inbound><return-response><set-status code="418" reason="teapot" />'
              '<set-header name="Content-Type" exists-action="override"><value>text/plain'
              "</value></set-header><set-body>short and stout</set-body></return-response>"
              "</inbound></policies>")
    base = {"name": "features", "revision": 2, "environment": "prod",
            "backend_url": "http://127.0.0.1:9",
            "operations": [{"id": "score", "method": "POST", "url_template": "/score"}]}
    return [dict(base, path="features", policy_xml=features),
            dict(base, name="teapot", path="teapot", policy_xml=teapot, anonymous=True)]


def named(home: Path, env: str, backend_url: str) -> dict[str, Any]:
    """The two named values the default template needs for env."""
    return {f"{env}-backend-key": {"secret": True, "value": encrypt_named_value(home, BACKEND_KEY)},
            f"{env}-backend-url": {"secret": False, "value": backend_url}}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    """Issuers, backend and a gateway over HTTPS, configured with several APIs."""
    home = tmp_path_factory.mktemp("home")
    tls = ensure_tls(home)
    loop = LoopThread()
    issuer, rot, down, kid = (Issuer(loop, home) for _ in range(4))
    backend = Backend(loop)
    closed = free_port()
    config: dict[str, Any] = {"apis": [
        api_entry("prod", "credit-risk", issuer),
        api_entry("limited", "limited/credit-risk", issuer, rate=5),
        api_entry("slow", "slow/credit-risk", issuer, template="/slow"),
        api_entry("down", "down/credit-risk", issuer),
        api_entry("leak", "leak/credit-risk", issuer, template="/leak"),
        api_entry("rot", "rot/credit-risk", rot),
        api_entry("isdown", "isdown/credit-risk", down),
        api_entry("kid", "kid/credit-risk", kid),
    ], "named_values": {}}
    config["apis"] += feature_apis(issuer)
    for env in ("prod", "limited", "slow", "leak", "rot", "isdown", "kid"):
        config["named_values"].update(named(home, env, backend.url))
    config["named_values"].update(named(home, "down", f"http://127.0.0.1:{closed}"))
    write_gateway_config(home, config)
    settings = GatewaySettings(upstream_timeout_s=1.0, connect_timeout_s=1.0,
                               jwks=JwksSettings(refetch_cooldown_s=1.0, lifetime_s=3600),
                               reload_interval_s=0.1, log_flush_interval_s=0.1)
    app = create_gateway_app(home, redis_url=redis_url, settings=settings)
    port = loop.run(app.start("127.0.0.1", 0, server_ssl_context(home)))
    yield Stack(home, loop, issuer, rot, down, kid, backend, f"https://127.0.0.1:{port}",
                str(tls.ca_cert), config, app, redis_url)
    loop.run(app.stop())
    for srv in (issuer, rot, down, kid):
        srv.stop()
    loop.run(backend._runner.cleanup())
    loop.stop()


def b64(data: bytes | dict[str, Any]) -> str:
    """base64url without padding (of JSON if a dict)."""
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


Minter = Callable[..., str]
