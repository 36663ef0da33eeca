"""The score tester: a form from the deployed model's signature, scored through the real gateway."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, current_app, render_template, request
from flask_login import current_user

from app.auth.roles import Role
from app.auth.users import role_required
from app.errors import AppError, BadRequest, Conflict, ValidationError
from app.services import scoring
from app.services.backend import environment_names

bp = Blueprint("scoring", __name__, url_prefix="/score")
log = logging.getLogger(__name__)

# Batch mode reads the CSV in the browser and sends it in chunks; these bound the whole file.
BATCH_MAX_BYTES = 5 * 1024 * 1024
BATCH_MAX_ROWS = 20_000


def _environment(raw: Any) -> str:
    value = str(raw or "staging")
    names = environment_names()
    if value not in names:
        raise ValidationError(f"unknown environment {value!r}; use {' or '.join(names)}",
                              errors=[{"field": "environment", "message": "unknown"}])
    return value


def _gateway() -> tuple[str, str | bool, str | None]:
    """The gateway URL, what to verify its certificate with, and the CA path for snippets."""
    ca = str(current_app.config.get("CA_BUNDLE") or "") or None
    return str(current_app.config["GATEWAY_URL"]), (ca or True), ca


def _token() -> str:
    """The signed-in user's access token (raises SignInRequired when it cannot be renewed)."""
    from app.auth.session_tokens import user_access_token

    return user_access_token(current_user._get_current_object())


def _page(environment: str, *, values: dict[str, Any] | None = None,
          outcome: scoring.ScoreOutcome | None = None, problem: str | None = None,
          sign_in_again: bool = False, status: int = 200, explain: bool = True,
          explain_note: str | None = None) -> Any:
    """Render the tester for an environment (with the last call's outcome, if any)."""
    gateway, _, ca = _gateway()
    url = scoring.score_url(gateway, environment)
    model = None
    unavailable = None
    try:
        model = scoring.deployed_model(environment)
    except scoring.ScoringUnavailable as exc:
        unavailable = str(exc)
    fields = scoring.form_fields(model.signature, values) if model else []
    body = outcome.request_json if outcome else (
        {"data": [scoring.example_record(model.signature)], "explain": True} if model else None)
    return render_template(
        "tester/index.html", environment=environment, environments=environment_names(),
        model=model, unavailable=unavailable, fields=fields, outcome=outcome, url=url,
        problem=problem, sign_in_again=sign_in_again,
        raw_request=scoring.raw_request(url, body) if body else "",
        raw_response=json.dumps(outcome.body, indent=2, ensure_ascii=False) if outcome else "",
        curl=scoring.curl_snippet(url, body, ca) if body else "",
        python=scoring.python_snippet(url, body, ca) if body else "",
        max_chunk=scoring.MAX_CHUNK_ROWS, max_bytes=BATCH_MAX_BYTES, max_rows=BATCH_MAX_ROWS,
        explain=explain, explain_note=explain_note, top_reasons=scoring.TOP_REASONS,
    ), status


@bp.get("/")
@role_required(Role.SCORER)
def index() -> Any:
    """Show the form for the chosen environment, prefilled with the seed's example record."""
    return _page(_environment(request.args.get("environment")))


@bp.post("/")
@role_required(Role.SCORER)
def create() -> Any:
    """Score the form's record through the gateway with the user's own token."""
    from app.auth.session_tokens import SignInRequired

    environment = _environment(request.form.get("environment"))
    try:
        model = scoring.deployed_model(environment)
    except scoring.ScoringUnavailable as exc:
        return _page(environment, problem=str(exc), status=409)
    values = {name: request.form.get(name) for name in model.signature.feature_names}
    record = scoring.record_from_form(model.signature, values)
    explain = request.form.get("explain") == "1"
    try:
        token = _token()
    except SignInRequired as exc:
        return _page(environment, values=values, problem=exc.message, sign_in_again=True,
                     status=401, explain=explain)
    except AppError as exc:  # the token cache is busy or the identity provider is down
        return _page(environment, values=values, problem=exc.message, status=exc.status,
                     explain=explain)
    gateway, verify, _ = _gateway()
    url = scoring.score_url(gateway, environment)
    explain_note = None
    if explain:
        outcome, explain_note = scoring.score_explained(url, token, {"data": [record]},
                                                        verify=verify)
    else:
        outcome = scoring.call_gateway(url, token, {"data": [record]}, verify=verify)
    log.info("score tester: user=%s environment=%s status=%s latency_ms=%s", current_user.username,
             environment, outcome.status, outcome.latency_ms)
    return _page(environment, values=values, outcome=outcome, explain=explain,
                 explain_note=explain_note)


@bp.post("/batch")
@role_required(Role.SCORER)
def batch() -> Any:
    """Score one chunk (at most MAX_CHUNK_ROWS rows) of an uploaded CSV; JSON in, JSON out."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("send a JSON object: {environment, columns, rows}")
    environment = _environment(body.get("environment"))
    columns, rows = body.get("columns"), body.get("rows")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise ValidationError("columns must be a list of column names",
                              errors=[{"field": "columns", "message": "not a list of names"}])
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows) or not rows:
        raise ValidationError("rows must be a non-empty list of lists",
                              errors=[{"field": "rows", "message": "not a list of rows"}])
    if len(rows) > scoring.MAX_CHUNK_ROWS:
        raise ValidationError(f"at most {scoring.MAX_CHUNK_ROWS} rows per chunk",
                              errors=[{"field": "rows", "message": "too many rows"}])
    try:
        model = scoring.deployed_model(environment)
    except scoring.ScoringUnavailable as exc:
        raise Conflict(str(exc)) from None
    token = _token()  # SignInRequired becomes a 401 problem the page turns into a prompt
    gateway, verify, _ = _gateway()
    result = scoring.score_chunk(scoring.score_url(gateway, environment), token,
                                 model.signature, columns, rows, verify=verify,
                                 explain=body.get("explain") is True)
    return {"rows": result.rows, "model": {"name": model.name, "version": result.model_version
                                           or model.version},
            "status": result.status}
