"""The gateway's app factory, config hot reload and the blocking HTTPS server."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.gateway.config import ConfigError, GatewayConfig, default_config_path, load_config
from app.gateway.jwt import JwksRegistry
from app.gateway.observability import GatewayMetrics, RequestLog, RequestRecord
from app.gateway.proxy import SERVER_NAME, Outcome, preflight, problem, request_id, run_route
from app.gateway.proxy import cors_headers as _cors_headers
from app.gateway.ratelimit import create_rate_limiter
from app.gateway.state import GatewaySettings, GatewayState
from app.pki import ensure_tls

log = logging.getLogger(__name__)

STATE = web.AppKey("modelgate_gateway_state", GatewayState)


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


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    connector = aiohttp.TCPConnector(limit=state.settings.pool_size, keepalive_timeout=30,
                                     ttl_dns_cache=300)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                    skip_auto_headers=("User-Agent", "Accept-Encoding"),
                                    timeout=aiohttp.ClientTimeout(
                                        total=state.settings.upstream_timeout_s))
    state.set_session(session)
    state.request_log.start()
    _warm_jwks(state, state.config)
    watcher = asyncio.create_task(_watch_config(state))
    yield
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    await state.request_log.close()
    await state.limiter.close()
    await session.close()
    state.set_session(None)


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.metrics.jwks_fetches.set(state.jwks.total_fetches())
    body = generate_latest(state.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _handle(request: web.Request) -> web.StreamResponse:
    """Route one API call, run its policy, forward it, and record it."""
    state = request.app[STATE]
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
                for name, value in _cors_headers(cors, request.headers.get("Origin")):
                    response.headers[name] = value
        else:
            response = _unrouted(config, request)
    except Exception:  # noqa: BLE001 - the one boundary that turns surprises into a safe 500
        log.exception("gateway error (request %s)", outcome.request_id)
        response = problem(500, "The gateway failed to process the request.")
    response.headers["X-Request-ID"] = outcome.request_id
    response.headers["Server"] = SERVER_NAME
    elapsed = time.perf_counter() - started
    label = api_name or "-"
    state.metrics.observe(label, response.status, elapsed,
                          outcome.backend_ms / 1000 if outcome.backend_ms is not None else None)
    state.request_log.add(RequestRecord(
        time=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        caller=outcome.caller, api=api_name,
        revision=route.api.revision if route else None,
        environment=route.api.environment if route else None,
        status=response.status, latency_ms=round(elapsed * 1000, 3),
        backend_ms=round(outcome.backend_ms, 3) if outcome.backend_ms is not None else None,
        model_version=outcome.model_version, request_id=outcome.request_id))
    return response


def _unrouted(config: GatewayConfig, request: web.Request) -> web.Response:
    if request.path not in config.paths:
        return problem(404, "No API operation matches this path.")
    if request.method == "OPTIONS":
        for (_, path), candidate in config.routes.items():
            if path == request.path and candidate.api.policy.cors is not None:
                return preflight(candidate.api.policy.cors, request)
    return problem(405, "This operation does not accept this method.")


def create_gateway_app(home: Path, *, redis_url: str, config_path: Path | None = None,
                       settings: GatewaySettings | None = None) -> web.Application:
    """Build the gateway app (no I/O until it starts); APIs come from gateway/config.json."""
    home = Path(home)
    settings = settings or GatewaySettings()
    path = Path(config_path) if config_path else default_config_path(home)
    try:
        config = load_config(home, path)
    except ConfigError as exc:
        log.error("gateway config %s rejected at start, serving no APIs: %s", path, exc)
        config = GatewayConfig.empty()
    ca_file = settings.ca_file or ensure_tls(home).ca_cert
    client_ssl = ssl.create_default_context(cafile=str(ca_file))
    app = web.Application(client_max_size=settings.max_body_bytes,
                          handler_args={"max_field_size": settings.max_header_bytes,
                                        "max_line_size": settings.max_header_bytes})
    state = GatewayState(
        home, path, settings, config,
        jwks=JwksRegistry(lambda: app[STATE].session(), client_ssl, settings.jwks),
        limiter=create_rate_limiter(redis_url, settings.redis_timeout_s),
        metrics=GatewayMetrics(),
        request_log=RequestLog(home / "logs" / "gateway-requests.jsonl",
                               settings.log_flush_interval_s),
    )
    app[STATE] = state
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


def server_ssl_context(home: Path) -> ssl.SSLContext:
    """TLS server context from the instance's local certificate."""
    tls = ensure_tls(Path(home))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.server_cert), str(tls.server_key))
    return ctx


def serve(home: Path, host: str = "127.0.0.1", port: int = 8000,
          redis_url: str | None = None, *, settings: GatewaySettings | None = None,
          on_ready: Callable[[int], None] | None = None) -> None:
    """Serve over HTTPS until SIGINT/SIGTERM, then finish in-flight requests (≤ 10 s) and stop.

    Args:
        home: MODELGATE_HOME (TLS material, gateway/config.json, logs).
        host, port: where to listen; port 0 picks a free port.
        redis_url: counter store (default MODELGATE_REDIS_URL).
        settings: timeouts and limits.
        on_ready: called with the bound port once the gateway accepts connections.
    """
    url = redis_url or os.environ.get("MODELGATE_REDIS_URL")
    if not url:
        raise ValueError("the gateway needs a Redis URL (--redis-url or MODELGATE_REDIS_URL)")
    app = create_gateway_app(Path(home), redis_url=url, settings=settings)
    loop = _new_loop()
    try:
        loop.run_until_complete(_serve(app, host, port, server_ssl_context(Path(home)),
                                       on_ready))
    finally:
        loop.close()


async def _serve(app: web.Application, host: str, port: int, ssl_ctx: ssl.SSLContext,
                 on_ready: Callable[[int], None] | None) -> None:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10.0, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_ctx, backlog=1024).start()
        bound = int(runner.addresses[0][1])
        log.info("gateway listening on https://%s:%d", host, bound)
        if on_ready is not None:
            on_ready(bound)
        await stop.wait()
        log.info("gateway stopping: finishing in-flight requests")
    finally:
        await runner.cleanup()


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (a large share of a thin proxy's CPU is the loop), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
