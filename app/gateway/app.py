"""The gateway: its app factory, config hot reload, request handling and the HTTPS server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.gateway import flavour
from app.gateway.config import ConfigError, GatewayConfig, default_config_path, load_config
from app.gateway.http import HttpServer, Request, Response, ServerLimits, problem
from app.gateway.jwt import JwksRegistry
from app.gateway.observability import GatewayMetrics, RequestLog, RequestRecord
from app.gateway.proxy import SERVER_NAME, Outcome, preflight, request_id, run_route
from app.gateway.proxy import cors_headers as _cors_headers
from app.gateway.ratelimit import create_rate_limiter
from app.gateway.state import GatewaySettings, GatewayState
from app.gateway.upstream import UpstreamPool
from app.pki import ensure_tls

log = logging.getLogger(__name__)


def _fingerprint(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _warm_jwks(state: GatewayState, config: GatewayConfig) -> None:
    """Fetch the signing keys of every configured issuer in the background."""
    from app.gateway.policy import ValidateJwt

    urls = {u for api in config.apis for s in api.policy.inbound if isinstance(s, ValidateJwt)
            for u in s.openid_config_urls}
    for url in urls:
        cache = state.jwks.cache(url)
        if cache.issuer is None:
            asyncio.get_running_loop().create_task(cache.refresh())


async def _watch_config(state: GatewayState) -> None:
    """Re-read config.json after each atomic replace; a bad file keeps the running config."""
    seen = _fingerprint(state.config_path)
    while True:
        await asyncio.sleep(state.settings.reload_interval_s)
        current = _fingerprint(state.config_path)
        if current == seen:
            continue
        seen = current
        try:
            config = load_config(state.home, state.config_path)
        except (ConfigError, OSError) as exc:
            log.error("gateway config %s rejected, keeping the previous one: %s",
                      state.config_path, exc)
            continue
        state.config = config
        _warm_jwks(state, config)
        log.info("gateway config reloaded: %d APIs", len(config.apis))


class Gateway:
    """One gateway instance: state, request handling and its HTTP server."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        settings = state.settings
        self.server = HttpServer(self.handle, ServerLimits(
            max_header_bytes=settings.max_header_bytes, max_body_bytes=settings.max_body_bytes,
            keepalive_timeout_s=settings.keepalive_timeout_s,
            request_timeout_s=settings.request_timeout_s))
        self._watcher: asyncio.Task[None] | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0,
                    ssl_context: ssl.SSLContext | None = None, reuse_port: bool = False) -> int:
        """Start the background work and listen (SO_REUSEPORT if asked); returns the port."""
        state = self.state
        state.request_log.start()
        _warm_jwks(state, state.config)
        self._watcher = asyncio.create_task(_watch_config(state))
        return await self.server.start(host, port, ssl_context, reuse_port=reuse_port)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop listening, finish in-flight requests (up to grace_s), release everything."""
        await self.server.stop(grace_s)
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.state.request_log.close()
        await self.state.limiter.close()
        self.state.upstream.close()

    async def handle(self, request: Request) -> Response:
        """Route one request: the gateway's own endpoints, else an API call."""
        if request.method in ("GET", "HEAD"):
            if request.path == "/health":
                return Response(200, b'{"status":"ok"}',
                                CIMultiDict({"Content-Type": "application/json"}))
            if request.path == "/metrics":
                metrics = self.state.metrics
                metrics.jwks_fetches.set(self.state.jwks.total_fetches())
                return Response(200, generate_latest(metrics.registry),
                                CIMultiDict({"Content-Type": CONTENT_TYPE_LATEST}))
        return await self._api_call(request)

    async def _api_call(self, request: Request) -> Response:
        """Route one API call, run its policy, forward it, and record it."""
        state = self.state
        started = time.perf_counter()
        outcome = Outcome(request_id(request.headers.get("X-Request-ID")))
        config = state.config
        route = config.routes.get((request.method, request.path))
        api_name: str | None = None
        try:
            if route is not None:
                api_name = route.api.name
                response = await run_route(state, request, route, outcome)
                cors = route.api.policy.cors
                if cors is not None:
                    response.headers.extend(_cors_headers(cors, request.headers.get("Origin")))
            else:
                response = _unrouted(config, request)
        except Exception:  # noqa: BLE001 - the one boundary that turns surprises into a safe 500
            log.exception("gateway error (request %s)", outcome.request_id)
            response = problem(500, "The gateway failed to process the request.")
        response.headers["X-Request-ID"] = outcome.request_id
        response.headers["Server"] = SERVER_NAME
        elapsed = time.perf_counter() - started
        backend_ms = outcome.backend_ms
        state.metrics.observe(api_name or "-", response.status, elapsed,
                              backend_ms / 1000 if backend_ms is not None else None)
        # raw values: the log's flusher formats the time and rounds, off the request path
        state.request_log.add(RequestRecord(
            time.time(), outcome.caller, api_name, route.api.revision if route else None,
            route.api.environment if route else None, response.status, elapsed * 1000,
            backend_ms, outcome.model_version, outcome.request_id))
        return response


def _unrouted(config: GatewayConfig, request: Request) -> Response:
    if request.path not in config.paths:
        return problem(404, "No API operation matches this path.")
    if request.method == "OPTIONS":
        for (_, path), candidate in config.routes.items():
            if path == request.path and candidate.api.policy.cors is not None:
                return preflight(candidate.api.policy.cors, request)
    return problem(405, "This operation does not accept this method.")


def client_ssl_context(ca_file: Path) -> ssl.SSLContext:
    """TLS client context trusting the system CAs and the instance's local CA."""
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cafile=str(ca_file))
    return ctx


def create_gateway_app(home: Path, *, redis_url: str, config_path: Path | None = None,
                       settings: GatewaySettings | None = None) -> Gateway:
    """Build the gateway (no I/O until it starts); APIs come from gateway/config.json."""
    home = Path(home)
    settings = settings or GatewaySettings()
    path = Path(config_path) if config_path else default_config_path(home)
    try:
        config = load_config(home, path)
    except ConfigError as exc:
        log.error("gateway config %s rejected at start, serving no APIs: %s", path, exc)
        config = GatewayConfig.empty()
    upstream = UpstreamPool(ssl_context=client_ssl_context(settings.ca_file or
                                                           ensure_tls(home).ca_cert),
                            connect_timeout_s=settings.connect_timeout_s,
                            max_idle_per_origin=settings.pool_size,
                            max_connections_per_origin=settings.max_backend_connections,
                            queue_timeout_s=settings.backend_wait_s)
    return Gateway(GatewayState(
        home, path, settings, config,
        jwks=JwksRegistry(upstream, settings.jwks),
        limiter=create_rate_limiter(redis_url, settings.redis_timeout_s),
        metrics=GatewayMetrics(upstream),
        request_log=RequestLog(home / "logs" / "gateway-requests.jsonl",
                               settings.log_flush_interval_s),
        upstream=upstream,
    ))


def server_ssl_context(home: Path) -> ssl.SSLContext:
    """TLS server context from the instance's local certificate."""
    tls = ensure_tls(Path(home))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.server_cert), str(tls.server_key))
    return ctx


def serve(home: Path, host: str = "127.0.0.1", port: int = 8000,
          redis_url: str | None = None, *, settings: GatewaySettings | None = None,
          on_ready: Callable[[int], None] | None = None, reuse_port: bool = False) -> None:
    """Serve over HTTPS until SIGINT/SIGTERM, then finish in-flight requests (≤ 10 s) and stop.

    Args:
        home: MODELGATE_HOME (TLS material, gateway/config.json, logs).
        host, port: where to listen; port 0 picks a free port.
        redis_url: counter store (default MODELGATE_REDIS_URL).
        settings: timeouts and limits.
        on_ready: called with the bound port once the gateway accepts connections.
        reuse_port: bind with SO_REUSEPORT, beside other workers on the same port
            (app/gateway/workers.py).
    """
    url = redis_url or os.environ.get("MODELGATE_REDIS_URL")
    if not url:
        raise ValueError("the gateway needs a Redis URL (--redis-url or MODELGATE_REDIS_URL)")
    settings = settings or GatewaySettings.from_env(os.environ)
    gateway = create_gateway_app(Path(home), redis_url=url, settings=settings)
    loop = _new_loop()
    # Everything imported and built so far lives as long as the process: keep it out of the
    # collector's full passes, which otherwise walk it all and stall requests in flight for
    # ~15 ms each (measured with gc.callbacks on the request path).
    gc.collect()
    gc.freeze()
    try:
        loop.run_until_complete(_serve(gateway, host, port, server_ssl_context(Path(home)),
                                       on_ready, reuse_port))
    finally:
        loop.close()


async def _serve(gateway: Gateway, host: str, port: int, ssl_ctx: ssl.SSLContext,
                 on_ready: Callable[[int], None] | None, reuse_port: bool = False) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        bound = await gateway.start(host, port, ssl_ctx, reuse_port)
        log.info("gateway listening on https://%s:%d", host, bound)
        log.info("gateway modules: %s", flavour())
        if on_ready is not None:
            on_ready(bound)
        await stop.wait()
        log.info("gateway stopping: finishing in-flight requests")
    finally:
        await gateway.stop(10.0)


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (a large share of a thin proxy's CPU is the loop), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
