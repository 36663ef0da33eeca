"""The scoring service's aiohttp application factory and its request handlers."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from app.serving import explain
from app.serving.errors import ProblemError, problem_response
from app.serving.keys import KeyStore
from app.serving.model import ModelLoadError, ScoringModel, load_model
from app.serving.openapi import build_openapi
from app.serving.sampling import Sampler
from app.serving.validation import RecordValidator, parse_body

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
_JSON = "application/json"
_UNAUTHORIZED_HEADERS = (("WWW-Authenticate", 'Bearer realm="scoring"'),)

Loader = Callable[[Path], ScoringModel]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class LoadedModel:
    """Everything the hot path needs once the model is ready, swapped in as one object."""

    model: ScoringModel
    validator: RecordValidator
    openapi: bytes
    model_info: dict[str, str]
    explainer: explain.Explainer | None = None
    explain_unavailable: str | None = None  # why this model cannot give reason codes


class ServiceState:
    """Mutable state of one replica: the loaded model (or why not), keys, draining flag."""

    def __init__(self, model_dir: Path, keys: KeyStore, max_body_bytes: int) -> None:
        self.model_dir = model_dir
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        self.loaded: LoadedModel | None = None
        self.load_error: str | None = None
        self.draining = False
        self.in_flight = 0
        self.load_task: asyncio.Future[None] | None = None
        self.sampler: Sampler | None = None  # drift sampling (app.serving.sampling), if on


STATE = web.AppKey("scoring_state", ServiceState)


def request_id_for(request: web.Request) -> str:
    """The caller's X-Request-ID when it is short and plain, else a fresh one."""
    given = request.headers.get("X-Request-ID")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


async def score(request: web.Request) -> web.Response:
    """POST /score: key check, then content type, size, JSON, schema, and prediction."""
    state = request.app[STATE]
    request_id = request_id_for(request)
    try:
        if not state.keys.check_header(request.headers.get("Authorization")):
            raise ProblemError(401, "A valid key is required.", headers=_UNAUTHORIZED_HEADERS)
        loaded = state.loaded
        if loaded is None:
            raise ProblemError(503, "The model is not ready.", headers=(("Retry-After", "1"),))
        if request.content_type != _JSON:
            raise ProblemError(415, "Content-Type must be application/json.")
        length = request.content_length
        if length is not None and length > state.max_body_bytes:
            raise ProblemError(413, f"The body exceeds {state.max_body_bytes} bytes.")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ProblemError(413, f"The body exceeds {state.max_body_bytes} bytes.") from None
        payload = parse_body(body)
        wanted = explain.requested(payload, request.query_string)
        rows = loaded.validator.validate_body(payload)
        predictions = loaded.model.predictions(rows)
        if wanted:
            explain.add_reasons(predictions, rows, loaded.explainer, loaded.explain_unavailable)
    except ProblemError as problem:
        return problem.to_response(request_id)
    if state.sampler is not None:
        state.sampler.offer(loaded.model.signature, rows, predictions)
    payload = {"predictions": predictions, "model": loaded.model_info, "request_id": request_id}
    response = web.Response(body=json.dumps(payload).encode(), content_type=_JSON)
    response.headers["X-Request-ID"] = request_id
    # The gateway logs the model version per call; a header spares it parsing every body.
    response.headers["X-Model-Version"] = str(loaded.model_info["version"])
    return response


async def live(request: web.Request) -> web.Response:
    """GET /health/live: the process answers."""
    return web.json_response({"status": "live"})


async def ready(request: web.Request) -> web.Response:
    """GET /health/ready: 200 only once the model loaded and its self-test passed."""
    state = request.app[STATE]
    loaded = state.loaded
    if state.draining:
        return problem_response(503, "The replica is shutting down.")
    if loaded is None:
        detail = "The model failed to load." if state.load_error else "The model is loading."
        return problem_response(503, detail, headers=(("Retry-After", "1"),))
    model = loaded.model
    return web.json_response(
        {
            "status": "ready",
            "model": loaded.model_info,
            "compute_path": model.path_name,
            "fallback_reason": model.fallback_reason,
            "explain": loaded.explainer is not None,
            "explain_unavailable": loaded.explain_unavailable,
        }
    )


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json, generated from the loaded model's signature."""
    loaded = request.app[STATE].loaded
    if loaded is None:
        return problem_response(503, "The model is not ready.", headers=(("Retry-After", "1"),))
    return web.Response(body=loaded.openapi, content_type=_JSON)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count in-flight requests; render errors as problem+json, never a traceback."""
    state = request.app[STATE]
    state.in_flight += 1
    try:
        response = await handler(request)
        if state.draining:
            response.force_close()  # clients must not reuse a connection to a stopping replica
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = tuple((k, v) for k, v in exc.headers.items() if k.lower() == "allow")
        return problem_response(exc.status, exc.reason, headers=kept)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(500, "Internal error.", request_id=request_id_for(request))
    finally:
        state.in_flight -= 1


def _loaded(model: ScoringModel, model_dir: Path) -> LoadedModel:
    """Precompute the hot path's validator, model info, OpenAPI bytes and explainer."""
    signature = model.signature
    explainer, unavailable = explain.explainer_for(model, model_dir)
    return LoadedModel(
        model=model,
        validator=RecordValidator(signature),
        openapi=json.dumps(build_openapi(signature)).encode(),
        model_info={"name": signature.name, "version": signature.version or ""},
        explainer=explainer,
        explain_unavailable=unavailable,
    )


async def _load_in_background(state: ServiceState, loader: Loader) -> None:
    """Load and self-test the model in a worker thread; the event loop keeps answering."""
    loop = asyncio.get_running_loop()
    try:
        model = await loop.run_in_executor(None, loader, state.model_dir)
    except ModelLoadError as exc:
        state.load_error = str(exc)
        log.error("model load failed: %s", exc)
        return
    except Exception as exc:
        state.load_error = type(exc).__name__
        log.exception("model load failed")
        return
    _install(state, model)


def _install(state: ServiceState, model: ScoringModel) -> None:
    """Make a self-tested model live and say which compute path it uses."""
    state.loaded = _loaded(model, state.model_dir)
    signature = model.signature
    log.info(
        "model %s version %s ready on the %s path%s",
        signature.name,
        signature.version,
        model.path_name,
        f" ({model.fallback_reason})" if model.fallback_reason else "",
    )


def _run_sampler(app: web.Application, sampler: Sampler) -> None:
    """Flush the sampler in the background while the app runs, and once more at cleanup."""
    tasks: list[asyncio.Task[None]] = []

    async def start(app: web.Application) -> None:
        tasks.append(asyncio.ensure_future(sampler.run()))

    async def stop(app: web.Application) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sampler.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)


def create_scoring_app(
    model_dir: Path | str,
    keys_file: Path | str,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    loader: Loader = load_model,
    model: ScoringModel | None = None,
    sampler: Sampler | None = None,
) -> web.Application:
    """Build the scoring service; ready at once with a preloaded model, else loads in background.

    Args:
        model_dir: model package directory (model.joblib + signature.json).
        keys_file: JSON file with primary_sha256 / secondary_sha256 digests.
        max_body_bytes: request body limit; larger bodies get 413.
        loader: how to load the package (tests inject slow or failing loaders).
        model: an already loaded and self-tested model (from load_model); no loading then.
        sampler: drift sampling of scored records, flushed in the background (None: off).
    """
    app = web.Application(client_max_size=max_body_bytes, middlewares=[problem_middleware])
    state = ServiceState(Path(model_dir), KeyStore(keys_file), max_body_bytes)
    app[STATE] = state
    state.sampler = sampler
    if model is not None:
        _install(state, model)
    if sampler is not None:
        _run_sampler(app, sampler)

    async def start_loading(app: web.Application) -> None:
        if state.loaded is not None:
            return
        state.load_task = asyncio.ensure_future(_load_in_background(state, loader))

    async def stop_loading(app: web.Application) -> None:
        if state.load_task is not None and not state.load_task.done():
            state.load_task.cancel()

    app.on_startup.append(start_loading)
    app.on_cleanup.append(stop_loading)
    app.router.add_post("/score", score)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/openapi.json", openapi)
    return app
