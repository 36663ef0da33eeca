"""The panel REST API (`/api/v1`): what the pages can do, scripts and CI can do."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request
from flask_login import current_user

from app.auth.roles import Role
from app.auth.users import role_required, signed_in
from app.errors import BadRequest, ValidationError
from app.extensions import csrf
from app.params import int_arg
from app.services import jobs

bp = Blueprint("api", __name__, url_prefix="/api/v1")
# Bearer-token callers carry no cookie, so CSRF cannot apply to them; session callers are
# checked in require_csrf_for_session below.
csrf.exempt(bp)


@bp.before_request
def require_csrf_for_session() -> None:
    """Session-authenticated writes need the CSRF header; bearer-token writes do not."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    if request.headers.get("Authorization", "").lower().startswith("bearer "):
        return
    csrf.protect()


def _json_body() -> dict[str, Any]:
    """Parse a JSON object body or raise a 4xx that says what is wrong."""
    if not request.is_json:
        raise BadRequest("send a JSON body with Content-Type: application/json")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


@bp.get("/jobs")
@signed_in
def list_jobs() -> Any:
    """List jobs, newest first (?status=, ?kind=, ?parent_id=, ?limit=)."""
    limit = int_arg("limit", 50, minimum=1)
    found = jobs.list_jobs(limit=limit, status=request.args.get("status"),
                           kind=request.args.get("kind"),
                           parent_id=request.args.get("parent_id"))
    return {"jobs": [jobs.to_dict(job) for job in found]}


@bp.post("/jobs")
@signed_in
def create_job() -> Any:
    """Queue a job: 202 with the job; 403 without the role; 503 if the queue is down."""
    body = _json_body()
    if "kind" not in body:
        raise ValidationError("kind is required", errors=[{"field": "kind",
                                                           "message": "required"}])
    kind = jobs.parse_kind(body["kind"])
    job = jobs.submit(kind, body.get("params"), current_user.username, roles=current_user.roles)
    return jobs.to_dict(job), 202, {"Location": f"/api/v1/jobs/{job.id}"}


@bp.get("/jobs/<job_id>")
@signed_in
def get_job(job_id: str) -> Any:
    """Return one job and (?log=1) its log."""
    payload = jobs.to_dict(jobs.get(job_id))
    if request.args.get("log"):
        payload["log"] = [jobs.log_to_dict(line) for line in jobs.logs(job_id)]
    return payload


@bp.post("/jobs/<job_id>/cancel")
@signed_in
def cancel_job(job_id: str) -> Any:
    """Cancel a job: 200 with the job, 409 if it already ended."""
    return jobs.to_dict(jobs.cancel(job_id, current_user.username, roles=current_user.roles))


@bp.get("/openapi.json")
def openapi() -> Any:
    """Describe this API (OpenAPI 3.1)."""
    from app.api.openapi import document

    return document()


@bp.get("/models/<name>/versions")
@signed_in
def list_model_versions(name: str) -> Any:
    """List a model's versions, newest first, with metrics, aliases, tags and lineage."""
    from app.errors import NotFound
    from app.services import models

    versions = models.list_versions(name)
    if not versions:
        raise NotFound(f"model {name!r} has no registered versions")
    return {"name": name, "versions": models.versions_dicts(versions)}


@bp.get("/apis")
@signed_in
def list_apis() -> Any:
    """Published APIs with their current revision and gateway URL."""
    from flask import current_app

    from app.services import apis

    gateway = str(current_app.config["GATEWAY_URL"])
    return {"gateway": gateway,
            "apis": [apis.to_dict(row, gateway) for row in apis.list_current()]}


@bp.get("/apis/<name>/revisions")
@signed_in
def list_api_revisions(name: str) -> Any:
    """One API's revisions, newest first (the current one has is_current)."""
    from flask import current_app

    from app.errors import NotFound
    from app.services import apis

    rows = apis.revisions_of(name)
    if not rows:
        raise NotFound(f"API {name!r} has never been published")
    gateway = str(current_app.config["GATEWAY_URL"])
    return {"name": name, "revisions": [apis.to_dict(row, gateway) for row in rows]}


@bp.post("/apis/<name>/revisions/<id:revision>/rollback")
@role_required(Role.ENGINEER)
def rollback_api(name: str, revision: int) -> Any:
    """Make an earlier revision current again: 200 with it, 409 if it already is."""

    from flask import current_app

    from app.services import apis

    row = apis.rollback_to(name, revision,
                           current_user.username)
    return apis.to_dict(row, str(current_app.config["GATEWAY_URL"]))


@bp.get("/deployments")
@signed_in
def list_deployments() -> Any:
    """Environments with their active slot, model version, replica health, traffic, key age."""


    from app.services import deployments

    return {"environments": deployments.overview()}


@bp.get("/promotions")
@signed_in
def list_promotions() -> Any:
    """Promotion requests, pending first (?state=, ?requested_by=, ?environment=, ?limit=)."""
    from app.services import promotions

    found = promotions.list_promotions(
        state=request.args.get("state"), requested_by=request.args.get("requested_by"),
        environment=request.args.get("environment"),
        limit=int_arg("limit", 100, minimum=1))
    return {"promotions": [promotions.to_dict(row) for row in found]}


@bp.post("/promotions")
@role_required(Role.ENGINEER)
def create_promotion() -> Any:
    """Request a promotion: 201; 403 without MLOps.Engineer; 422 bad version or no reason.

    The answer carries ``gate``: the promotion gate's result for the version (a failed gate
    does not refuse the request; approving it then needs an override with a reason).

    ``kind`` "model" (default) promotes ``version``; "api-revision" publishes ``policy_xml``
    (default: the environment's default policy) as a new API revision.
    """
    from app.services import promotions

    body = _json_body()
    row = promotions.request_from(body, current_user.username, roles=current_user.roles)
    return promotions.to_dict(row), 201, {"Location": f"/api/v1/promotions/{row.id}"}


@bp.get("/promotions/<promotion_id>")
@signed_in
def get_promotion(promotion_id: str) -> Any:
    """One promotion request."""
    from app.services import promotions

    return promotions.to_dict(promotions.get(promotion_id))


@bp.post("/promotions/<promotion_id>/<any(approve, reject):decision>")
@role_required(Role.APPROVER)
def decide_promotion(promotion_id: str, decision: str) -> Any:
    """Approve or reject: 403 without the role or on your own request; 409 not pending; 422
    approving a version that failed the promotion gate without ``gate_override`` (a reason)."""
    from app.services import promotions

    body = _json_body() if request.content_length else {}
    if decision == "approve":
        row = promotions.approve(promotion_id, current_user.username, roles=current_user.roles,
                                 comment=body.get("comment", ""),
                                 gate_override=body.get("gate_override"))
    else:
        row = promotions.reject(promotion_id, current_user.username, roles=current_user.roles,
                                comment=body.get("comment", ""))
    return promotions.to_dict(row)


@bp.get("/drift/<environment>")
@role_required(Role.ENGINEER, Role.APPROVER)
def get_drift(environment: str) -> Any:
    """An environment's latest drift checks (oldest first) and its waiting samples."""
    from app.errors import NotFound
    from app.services import deployments, drift

    if environment not in deployments.environments():
        raise NotFound(f"environment {environment!r} is not known")
    view = drift.overview(environment, int_arg("limit", drift.HISTORY_LIMIT, minimum=1,
                                               maximum=drift.MAX_HISTORY))
    return {"environment": environment, "pending": view.pending,
            "checks": [drift.check_to_dict(row) for row in view.checks]}
