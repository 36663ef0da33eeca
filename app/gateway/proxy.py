"""The request pipeline: route, run the compiled inbound policy, forward, filter the response."""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any

from multidict import CIMultiDict

from app.gateway.config import ApiRevision, Route
from app.gateway.http import Request, Response, problem
from app.gateway.jwt import TokenRejected, claims_satisfy, verify_authorization
from app.gateway.plan import HOP_BY_HOP
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
from app.gateway.upstream import (
    UpstreamBusy,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)

log = logging.getLogger(__name__)

_DROP_RESPONSE = HOP_BY_HOP | {"content-length", "server", "date"}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_GENERIC_401 = "The access token is missing or invalid."
SERVER_NAME = "modelgate-gateway"


class Outcome:
    """What the request log and metrics need about one request (mutable while it runs)."""

    __slots__ = ("request_id", "caller", "backend_ms", "model_version")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.caller: str | None = None
        self.backend_ms: float | None = None
        self.model_version: str | None = None


class _Context:
    """One request on its way through the pipeline (slots: one is built per request)."""

    __slots__ = ("route", "outcome", "backend_url", "headers", "added", "variables",
                 "from_backend")

    def __init__(self, route: Route, outcome: Outcome, headers: list[tuple[str, str]]) -> None:
        self.route = route
        self.outcome = outcome
        self.backend_url = route.api.backend_url
        # the request headers for the backend, in order: set-header edits this list in place
        self.headers = headers
        self.added: set[str] | None = None  # lower-case names set-header added to headers
        self.variables: dict[str, dict[str, Any]] = {}
        self.from_backend = False


# Generated ids: a random per-process prefix and a counter (unique, 32 hex characters, and
# without uuid4's system call per request; request ids need not be unguessable).
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(int.from_bytes(secrets.token_bytes(4), "big"))


def request_id(raw: str | None) -> str:
    """Accept the caller's X-Request-ID if sane, else generate one."""
    if raw and _REQUEST_ID.match(raw):
        return raw
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


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


def _connection_named(headers: CIMultiDict[str]) -> frozenset[str]:
    """Header names listed in Connection (hop-by-hop for this message, RFC 9110 §7.6.1); the
    callers look for the field first, since most messages have none."""
    return frozenset(t.strip().lower() for v in headers.getall("Connection")
                     for t in v.split(","))


def _set_request_header(ctx: _Context, step: SetHeader) -> None:
    """set-header on the backend request's header list (names compared case-insensitively).

    The caller's copies of a name the policy overrides or deletes were left out when the list
    was built (Policy.replaced), so such a name is present only if an earlier step added it.
    """
    headers, lowered = ctx.headers, step.lowered
    if step.action is not HeaderAction.APPEND:
        if lowered in ctx.route.api.policy.replaced:
            present = ctx.added is not None and lowered in ctx.added
        else:
            present = any(name.lower() == lowered for name, _ in headers)
        if step.action is HeaderAction.SKIP and present:
            return
        if present:
            headers[:] = [(n, v) for n, v in headers if n.lower() != lowered]
        if step.action is HeaderAction.DELETE:
            return
    headers.extend((step.name, v) for v in step.values)
    if ctx.added is None:
        ctx.added = set()
    ctx.added.add(lowered)


def _forward_headers(request: Request, rid: str, policy: Policy) -> list[tuple[str, str]]:
    """The caller's end-to-end headers for the backend, in one pass, plus the gateway's own."""
    headers = request.headers
    drop = policy.dropped_request
    if "Connection" in headers:
        drop = drop | _connection_named(headers)
    forwarded = [(k, v) for k, v in headers.items() if k.lower() not in drop]
    forwarded += (("X-Forwarded-For", request.remote), ("X-Forwarded-Proto", request.scheme),
                  ("X-Request-ID", rid))
    return forwarded


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


def preflight(cors: Cors, request: Request) -> Response:
    """Answer an OPTIONS preflight (200 without CORS headers when it does not match)."""
    origin = request.headers.get("Origin")
    method = request.headers.get("Access-Control-Request-Method", "").upper()
    resp = Response(200)
    if origin and method in cors.methods and ("*" in cors.origins or origin in cors.origins):
        for name, value in cors_headers(cors, origin):
            resp.headers[name] = value
        resp.headers["Access-Control-Allow-Methods"] = ", ".join(cors.methods)
        if cors.headers:
            resp.headers["Access-Control-Allow-Headers"] = ", ".join(cors.headers)
        if cors.max_age_s is not None:
            resp.headers["Access-Control-Max-Age"] = str(cors.max_age_s)
    return resp


def _jwt_failure(step: ValidateJwt, reason: str) -> Response:
    log.debug("token rejected: %s", reason)
    challenge = 'Bearer error="insufficient_scope"' if step.failed_status == 403 else \
        'Bearer error="invalid_token"'
    detail = step.failed_message or (_GENERIC_401 if step.failed_status == 401 else None)
    return problem(step.failed_status, detail, [("WWW-Authenticate", challenge)])


def _claims_allowed(ctx: _Context, step: ValidateJwt, claims: dict[str, Any]) -> Response | None:
    """The claim checks of a validate-jwt step on a verified token (None: go on)."""
    if step.required_claims and not claims_satisfy(claims, step.required_claims):
        return _jwt_failure(step, "required-claims")
    if step.output_variable:
        ctx.variables[step.output_variable] = claims
    outcome = ctx.outcome
    if outcome.caller is None:
        outcome.caller = str(claims.get("oid") or claims.get("sub") or "") or None
    return None


async def _rate_limited(state: GatewayState, key: str, step: RateLimitByKey) -> Response | None:
    """Ask Redis for a permit (the caller's lease is used up); a refusal is the answer."""
    try:
        decision = await state.limiter.hit(key, step.calls, step.renewal_period_s)
    except RateLimitUnavailable as exc:
        log.error("rate limiter unavailable (%s): failing closed", exc)
        return problem(503, "The service is temporarily unavailable.", [("Retry-After", "1")])
    if not decision.allowed:
        return problem(429, f"Rate limit is exceeded. Try again in {decision.retry_after_s} "
                       "seconds.", [("Retry-After", str(decision.retry_after_s))])
    return None


def _return_response(step: ReturnResponse) -> Response:
    headers: CIMultiDict[str] = CIMultiDict()
    _apply_headers(headers, step.headers)
    return Response(step.status, step.body.encode(), headers, step.reason)


async def _inbound(state: GatewayState, request: Request, ctx: _Context) -> Response | None:
    """Run the inbound steps in order; a returned response ends the pipeline.

    The common outcomes need no await: a token already verified (the verified-token cache)
    and a permit from the caller's current rate-limit lease.
    """
    api = ctx.route.api
    for step in api.policy.inbound:
        result: Response | None = None
        if type(step) is ValidateJwt:
            values = request.headers.getall(step.header_name, ())
            claims = state.jwks.verified.recall(step.validation_key, api.access_token_type,
                                                values[0]) if len(values) == 1 else None
            if claims is None:
                try:
                    claims = await verify_authorization(values, step, state.jwks,
                                                        api.access_token_type)
                except TokenRejected as exc:
                    return _jwt_failure(step, str(exc))
            result = _claims_allowed(ctx, step, claims)
        elif type(step) is RateLimitByKey:
            key = resolve_counter_key(step.counter_key, ctx.variables)
            if state.limiter.take_leased(key, step.calls, step.renewal_period_s) is None:
                result = await _rate_limited(state, key, step)
        elif type(step) is SetHeader:
            _set_request_header(ctx, step)
        elif type(step) is SetBackendService:
            ctx.backend_url = step.base_url
        elif type(step) is CheckHeader:
            result = _check_header(request, step)
        elif type(step) is ReturnResponse:
            result = _return_response(step)
        if result is not None:
            return result
    return None


def _check_header(request: Request, step: CheckHeader) -> Response | None:
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


def _secret_in(policy: Policy, response: Response) -> str | None:
    """Where the answer holds a secret the policy sends to the backend ("body" or a header)."""
    values = "\n".join(response.headers.values())  # one scan per secret, in C
    for secret, raw in zip(policy.secrets, policy.secret_bytes, strict=True):
        if raw in response.body:
            return "body"
        if response.reason and secret in response.reason:
            return "reason"
        if secret in values:
            for name, value in response.headers.items():
                if secret in value:
                    return name
    return None


def guard_answer(api: ApiRevision, response: Response, *, from_backend: bool) -> Response:
    """The last check before an answer leaves: no secret named value reaches a caller.

    compile_policy already refuses a secret anywhere but the request to the backend, so a hit
    is a backend echoing its key, or a gap in those rules; either way the answer is replaced
    (502) and the log names where, never the secret. Costs one substring scan of the body and
    header values per secret the policy uses, as the backend check alone did before (nothing
    for policies without secrets).
    """
    policy = api.policy
    if not policy.secrets:
        return response
    where = _secret_in(policy, response)
    if where is None:
        return response
    added_by_policy = {h.name.lower() for h in (*policy.outbound, *policy.on_error)}
    if from_backend and where.lower() not in added_by_policy:
        log.error("backend response for %s held a secret named value in %s; blocked",
                  api.name, where)
        return problem(502, "The backend failed.")
    log.error("the policy of %s revision %d tried to return a secret named value in %s; "
              "blocked", api.name, api.revision, where)
    return problem(502, "The policy tried to return a secret.")


async def _forward(state: GatewayState, request: Request, ctx: _Context) -> Response:
    policy = ctx.route.api.policy
    target = ctx.route.operation.url_template
    if request.query_string:
        target += "?" + request.query_string
    pool = state.upstream
    started = time.perf_counter()
    try:
        answer = await pool.request(
            request.method, pool.origin(ctx.backend_url), target, ctx.headers, request.body,
            timeout_s=policy.forward_timeout_s or state.settings.upstream_timeout_s)
    except UpstreamBusy:
        # the backend's connection limit stayed full for the whole wait: nothing was sent
        return problem(503, "The backend is busy. Try again shortly.", [("Retry-After", "1")])
    except UpstreamConnectError:
        # nothing reached the backend (the pool already tried twice)
        return problem(502, "The backend is unreachable.")
    except UpstreamTimeout:
        return problem(504, "The backend did not answer in time.")
    except (UpstreamError, ValueError) as exc:
        log.warning("backend error for %s: %s", ctx.route.api.name, type(exc).__name__)
        return problem(502, "The backend failed.")
    finally:
        ctx.outcome.backend_ms = (time.perf_counter() - started) * 1000
    return _response(ctx, policy, answer)


def _response(ctx: _Context, policy: Policy, answer: UpstreamResponse) -> Response:
    raw = answer.headers
    drop = _DROP_RESPONSE | _connection_named(raw) if "Connection" in raw else _DROP_RESPONSE
    headers: CIMultiDict[str] = CIMultiDict(
        [(k, v) for k, v in answer.fields if k.lower() not in drop])
    ctx.from_backend = True
    if policy.outbound:
        _apply_headers(headers, policy.outbound)
    ctx.outcome.model_version = _model_version(headers, answer.body)
    return Response(answer.status, answer.body, headers)


async def run_route(state: GatewayState, request: Request, route: Route,
                    outcome: Outcome) -> Response:
    """Run one routed request through its policy and the backend."""
    if route.api.refusal is not None:  # logged when the config was loaded
        return problem(503, "This API is unavailable: the gateway refused its policy.")
    ctx = _Context(route, outcome, _forward_headers(request, outcome.request_id,
                                                        route.api.policy))
    response = await _inbound(state, request, ctx)
    if response is None:
        response = await _forward(state, request, ctx)
    if response.status >= 400 and route.api.policy.on_error:
        _apply_headers(response.headers, route.api.policy.on_error)
    return guard_answer(route.api, response, from_backend=ctx.from_backend)
