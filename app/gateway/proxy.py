"""The request pipeline: route, run the compiled inbound policy, forward, filter the response."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from app.gateway.config import Route
from app.gateway.jwt import TokenRejected, claims_satisfy, extract_token, validate_token
from app.gateway.policy import (
    CheckHeader,
    Cors,
    HeaderAction,
    Policy,
    RateLimitByKey,
    ReturnResponse,
    SetBackendService,
    SetHeader,
    ValidateJwt,
    resolve_counter_key,
)
from app.gateway.ratelimit import RateLimitUnavailable
from app.gateway.state import GatewayState

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade"})
# never forwarded from the caller: the gateway sets these itself (ASVS V4.1.3)
_DROP_REQUEST = HOP_BY_HOP | {"authorization", "host", "content-length", "x-forwarded-for",
                              "x-forwarded-host", "x-forwarded-proto", "forwarded",
                              "x-request-id"}
_DROP_RESPONSE = HOP_BY_HOP | {"content-length", "server", "date"}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_GENERIC_401 = "The access token is missing or invalid."
SERVER_NAME = "modelgate-gateway"


@dataclass
class Outcome:
    """What the request log and metrics need about one request (mutable while it runs)."""

    request_id: str
    caller: str | None = None
    backend_ms: float | None = None
    model_version: str | None = None


@dataclass
class _Context:
    route: Route
    outcome: Outcome
    backend_url: str
    headers: CIMultiDict[str]
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    validated: dict[tuple[object, ...], dict[str, Any]] = field(default_factory=dict)


def request_id(raw: str | None) -> str:
    """Accept the caller's X-Request-ID if sane, else generate one."""
    if raw and _REQUEST_ID.match(raw):
        return raw
    return uuid.uuid4().hex


def problem(status: int, detail: str | None = None,
            headers: Iterable[tuple[str, str]] = ()) -> web.Response:
    """An RFC 9457 problem+json response with a generic, safe detail."""
    title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    resp = web.Response(status=status, body=json.dumps(body).encode(),
                        content_type="application/problem+json")
    for name, value in headers:
        resp.headers[name] = value
    return resp


def _apply_headers(target: CIMultiDict[str], steps: Iterable[SetHeader]) -> None:
    """set-header semantics (override, skip, append, delete)."""
    for step in steps:
        if step.action is HeaderAction.DELETE:
            target.popall(step.name, None)
        elif step.action is HeaderAction.SKIP:
            if step.name not in target:
                for v in step.values:
                    target.add(step.name, v)
        else:
            if step.action is HeaderAction.OVERRIDE:
                target.popall(step.name, None)
            for v in step.values:
                target.add(step.name, v)


def _forward_headers(request: web.Request, rid: str) -> CIMultiDict[str]:
    connection_named = {t.strip().lower() for v in request.headers.getall("Connection", [])
                        for t in v.split(",")}
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        low = name.lower()
        if low not in _DROP_REQUEST and low not in connection_named:
            headers.add(name, value)
    headers["X-Forwarded-For"] = request.remote or ""
    headers["X-Forwarded-Proto"] = request.scheme
    headers["X-Request-ID"] = rid
    return headers


def cors_headers(cors: Cors, origin: str | None) -> list[tuple[str, str]]:
    """Headers for a simple (non-preflight) cross-origin response, if the origin is allowed."""
    if not origin or not ("*" in cors.origins or origin in cors.origins):
        return []
    out = [("Access-Control-Allow-Origin", "*" if "*" in cors.origins and not
            cors.allow_credentials else origin), ("Vary", "Origin")]
    if cors.allow_credentials:
        out.append(("Access-Control-Allow-Credentials", "true"))
    if cors.expose_headers:
        out.append(("Access-Control-Expose-Headers", ", ".join(cors.expose_headers)))
    return out


def preflight(cors: Cors, request: web.Request) -> web.Response:
    """Answer an OPTIONS preflight (200 without CORS headers when it does not match)."""
    origin = request.headers.get("Origin")
    method = request.headers.get("Access-Control-Request-Method", "").upper()
    resp = web.Response(status=200)
    if origin and method in cors.methods and ("*" in cors.origins or origin in cors.origins):
        for name, value in cors_headers(cors, origin):
            resp.headers[name] = value
        resp.headers["Access-Control-Allow-Methods"] = ", ".join(cors.methods)
        if cors.headers:
            resp.headers["Access-Control-Allow-Headers"] = ", ".join(cors.headers)
        if cors.max_age_s is not None:
            resp.headers["Access-Control-Max-Age"] = str(cors.max_age_s)
    return resp


def _jwt_failure(step: ValidateJwt, reason: str) -> web.Response:
    log.debug("token rejected: %s", reason)
    challenge = 'Bearer error="insufficient_scope"' if step.failed_status == 403 else \
        'Bearer error="invalid_token"'
    detail = step.failed_message or (_GENERIC_401 if step.failed_status == 401 else None)
    return problem(step.failed_status, detail, [("WWW-Authenticate", challenge)])


async def _validate_jwt(state: GatewayState, request: web.Request, ctx: _Context,
                        step: ValidateJwt) -> web.Response | None:
    try:
        token = extract_token(request.headers.get(step.header_name), step.require_scheme)
        cache_key = (step.validation_key(), token)
        claims = ctx.validated.get(cache_key)
        if claims is None:
            claims = await validate_token(token, step, state.jwks)
            ctx.validated[cache_key] = claims
    except TokenRejected as exc:
        return _jwt_failure(step, str(exc))
    if not claims_satisfy(claims, step.required_claims):
        return _jwt_failure(step, "required-claims")
    if step.output_variable:
        ctx.variables[step.output_variable] = claims
    if ctx.outcome.caller is None:
        ctx.outcome.caller = str(claims.get("oid") or claims.get("sub") or "") or None
    return None


async def _rate_limit(state: GatewayState, ctx: _Context,
                      step: RateLimitByKey) -> web.Response | None:
    key = resolve_counter_key(step.counter_key, ctx.variables)
    try:
        decision = await state.limiter.hit(key, step.calls, step.renewal_period_s)
    except RateLimitUnavailable as exc:
        log.error("rate limiter unavailable (%s): failing closed", exc)
        return problem(503, "The service is temporarily unavailable.", [("Retry-After", "1")])
    if not decision.allowed:
        return problem(429, f"Rate limit is exceeded. Try again in {decision.retry_after_s} "
                       "seconds.", [("Retry-After", str(decision.retry_after_s))])
    return None


def _return_response(step: ReturnResponse) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict()
    _apply_headers(headers, step.headers)
    return web.Response(status=step.status, reason=step.reason, body=step.body.encode(),
                        headers=headers)


async def _inbound(state: GatewayState, request: web.Request,
                   ctx: _Context) -> web.Response | None:
    """Run the inbound steps in order; a returned response ends the pipeline."""
    for step in ctx.route.api.policy.inbound:
        result: web.Response | None = None
        if isinstance(step, ValidateJwt):
            result = await _validate_jwt(state, request, ctx, step)
        elif isinstance(step, RateLimitByKey):
            result = await _rate_limit(state, ctx, step)
        elif isinstance(step, SetHeader):
            _apply_headers(ctx.headers, (step,))
        elif isinstance(step, SetBackendService):
            ctx.backend_url = step.base_url
        elif isinstance(step, CheckHeader):
            result = _check_header(request, step)
        elif isinstance(step, ReturnResponse):
            result = _return_response(step)
        if result is not None:
            return result
    return None


def _check_header(request: web.Request, step: CheckHeader) -> web.Response | None:
    value = request.headers.get(step.name)
    if value is not None:
        if not step.values:
            return None
        wanted = {v.lower() for v in step.values} if step.ignore_case else set(step.values)
        if (value.lower() if step.ignore_case else value) in wanted:
            return None
    return problem(step.failed_status, step.failed_message)


def _model_version(headers: CIMultiDict[str], body: bytes) -> str | None:
    explicit = headers.get("X-Model-Version")
    if explicit:
        return explicit[:64]
    if len(body) > 65536 or "json" not in headers.get("Content-Type", ""):
        return None
    try:
        model = json.loads(body).get("model")
        version = model.get("version") if isinstance(model, dict) else None
    except (ValueError, AttributeError):
        return None
    return str(version)[:64] if version is not None else None


def _leaks_secret(policy: Policy, headers: CIMultiDict[str], body: bytes) -> bool:
    """True if the backend's answer contains a secret named value (it must never reach callers)."""
    for secret in policy.secrets:
        if len(secret) >= 8 and (secret.encode() in body or
                                 any(secret in v for v in headers.values())):
            return True
    return False


async def _forward(state: GatewayState, request: web.Request, ctx: _Context) -> web.Response:
    policy = ctx.route.api.policy
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return problem(413, "The request body is too large.")
    url = ctx.backend_url + ctx.route.operation.url_template
    if request.query_string:
        url += "?" + request.query_string
    timeout = aiohttp.ClientTimeout(total=policy.forward_timeout_s or
                                    state.settings.upstream_timeout_s,
                                    connect=state.settings.connect_timeout_s)
    session = state.session()
    started = time.perf_counter()
    for attempt in (1, 2):
        try:
            async with session.request(request.method, url, headers=ctx.headers,
                                       data=body or None, timeout=timeout,
                                       allow_redirects=False) as upstream:
                payload = await upstream.read()
                status, raw_headers = upstream.status, upstream.headers
            break
        except aiohttp.ClientConnectorError:
            # connect failures never reached the backend, and scoring is idempotent anyway
            if attempt == 2:
                ctx.outcome.backend_ms = (time.perf_counter() - started) * 1000
                return problem(502, "The backend is unreachable.")
        except TimeoutError:
            ctx.outcome.backend_ms = (time.perf_counter() - started) * 1000
            return problem(504, "The backend did not answer in time.")
        except aiohttp.ClientError as exc:
            log.warning("backend error for %s: %s", ctx.route.api.name, type(exc).__name__)
            ctx.outcome.backend_ms = (time.perf_counter() - started) * 1000
            return problem(502, "The backend failed.")
    ctx.outcome.backend_ms = (time.perf_counter() - started) * 1000
    return _response(ctx, policy, status, raw_headers, payload)


def _response(ctx: _Context, policy: Policy, status: int, raw: CIMultiDictProxy[str],
              payload: bytes) -> web.Response:
    connection_named = {t.strip().lower() for v in raw.getall("Connection", [])
                        for t in v.split(",")}
    headers: CIMultiDict[str] = CIMultiDict(
        (k, v) for k, v in raw.items()
        if k.lower() not in _DROP_RESPONSE and k.lower() not in connection_named)
    if _leaks_secret(policy, headers, payload):
        log.error("backend response for %s contained a secret named value; blocked",
                  ctx.route.api.name)
        return problem(502, "The backend failed.")
    _apply_headers(headers, policy.outbound)
    ctx.outcome.model_version = _model_version(headers, payload)
    return web.Response(status=status, body=payload, headers=headers)


async def run_route(state: GatewayState, request: web.Request, route: Route,
                    outcome: Outcome) -> web.Response:
    """Run one routed request through its policy and the backend."""
    ctx = _Context(route, outcome, route.api.backend_url,
                   _forward_headers(request, outcome.request_id))
    response = await _inbound(state, request, ctx)
    if response is None:
        response = await _forward(state, request, ctx)
    if response.status >= 400 and route.api.policy.on_error:
        headers: CIMultiDict[str] = CIMultiDict(response.headers)
        _apply_headers(headers, route.api.policy.on_error)
        response.headers.clear()
        response.headers.extend(headers)
    return response
