"""Approvals pages: the inbox for approvers, my requests, the request form, decisions and
one-click rollback of production. Every rule lives in app.services.promotions / rollbacks."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user

from app.auth.roles import Role
from app.auth.users import role_required, signed_in
from app.db import utcnow
from app.errors import AppError, ValidationError
from app.services import promotions, rollbacks

logger = logging.getLogger(__name__)

bp = Blueprint("approvals", __name__, url_prefix="/approvals")


@bp.app_context_processor
def badge() -> dict[str, Any]:
    """`approvals_badge()` for the nav: pending requests, counted only for deciders."""

    def approvals_badge() -> int:
        if not current_user.is_authenticated or not current_user.can(Role.APPROVER):
            return 0
        try:
            return promotions.pending_count()
        except Exception as exc:  # a badge must never break a page (e.g. the error page)
            logger.info("approvals badge unavailable: %s", exc.__class__.__name__)
            return 0

    return {"approvals_badge": approvals_badge}


@bp.get("/")
@signed_in
def index() -> Any:
    """Pending requests first (with everything needed to decide), then the rest."""
    rows = promotions.list_promotions(limit=200)
    pending = [r for r in rows if r.state == promotions.PromotionState.PENDING]
    decided = [r for r in rows if r.state != promotions.PromotionState.PENDING]
    return render_template("approvals/index.html", pending=pending, decided=decided[:50],
                           now=utcnow(),
                           metric_rows=promotions.metric_rows, plan=promotions.plan,
                           policy_diff=promotions.policy_diff,
                           can_decide=current_user.can(Role.APPROVER),
                           can_request=current_user.can(Role.ENGINEER),
                           rolled_back=rollbacks.recent() if current_user.can(Role.APPROVER)
                           else [])


@bp.get("/mine")
@signed_in
def mine() -> Any:
    """The signed-in user's own requests, newest first."""
    rows = promotions.list_promotions(requested_by=current_user.username, limit=200)
    return render_template("approvals/mine.html", rows=rows,
                           can_request=current_user.can(Role.ENGINEER))


@bp.get("/new")
@role_required(Role.ENGINEER)
def new() -> Any:
    """The request form: a version from the registry, a reason; and prod's rollback targets."""
    return _new_page()


def _new_page(errors: dict[str, str] | None = None, form: Any = None) -> str:
    """The request forms; a refused request's errors sit beside its fields, its input kept."""
    from app.services import apis, deployments, models

    form = form or {}
    versions: list[Any] = []
    try:
        versions = models.list_versions(models.default_model_name())
    except AppError as exc:
        flash(f"The model registry cannot be read: {exc.message}", "error")
    # An API rollback of prod is a request to publish the earlier revision's policy again.
    api = apis.current(apis.api_name("prod"))
    wanted = request.args.get("api_revision", type=int)
    earlier = next((r for r in apis.revisions_of(api.api_name) if r.revision == wanted),
                   None) if api is not None and wanted else None
    return render_template("approvals/new.html", versions=versions,
                           current=deployments.active("prod"),
                           api=api, api_policy=(earlier or api).policy_xml if api else "",
                           api_earlier=earlier,
                           targets=rollbacks.targets("prod"),
                           selected=form.get("version") or request.args.get("version", ""),
                           errors=errors or {}, form=form)


@bp.post("/")
@role_required(Role.ENGINEER)
def create() -> Any:
    """Record a promotion request from the form (refused: the form again, errors beside it)."""
    try:
        row = promotions.request_from(request.form, current_user.username,
                                      roles=current_user.roles)
    except ValidationError as exc:
        kind = request.form.get("kind") or promotions.PromotionKind.MODEL.value
        return _new_page(_field_errors(kind, exc), request.form), 422
    what = (f"A new {row.model_name} revision" if row.kind == promotions.PromotionKind.API_REVISION
            else f"Promotion of v{row.model_version}")
    flash(f"{what} for {row.environment} requested; an approver has to decide on it.", "success")
    return redirect(url_for("approvals.detail", promotion_id=row.id))


def _field_errors(kind: str, exc: ValidationError) -> dict[str, str]:
    """``{"<kind>.<field>": message}``; the message is the sentence after "field: "."""
    sentence = exc.message.partition(": ")[2] or exc.message
    if not exc.errors:
        return {f"{kind}.form": exc.message}
    if len(exc.errors) == 1:
        return {f"{kind}.{exc.errors[0]['field']}": sentence}
    return {f"{kind}.{e['field']}": e["message"] for e in exc.errors}


@bp.get("/<promotion_id>")
@signed_in
def detail(promotion_id: str) -> Any:
    """One request with its evidence and, for approvers, the decision form."""
    row = promotions.get(promotion_id)
    return render_template("approvals/detail.html", row=row,
                           metric_rows=promotions.metric_rows(row.evidence or {}),
                           plan=promotions.plan(row), diff=promotions.policy_diff(row),
                           can_decide=current_user.can(Role.APPROVER))


@bp.post("/<promotion_id>/<any(approve, reject):decision>")
@role_required(Role.APPROVER)
def decide(promotion_id: str, decision: str) -> Any:
    """Approve or reject from the inbox (the service enforces four eyes and the state)."""
    comment = request.form.get("comment", "")
    try:
        if decision == "approve":
            # The override counts only when its box is ticked: an explicit choice.
            override = request.form.get("gate_override") \
                if request.form.get("gate_override_confirm") else None
            row = promotions.approve(promotion_id, current_user.username,
                                     roles=current_user.roles, comment=comment,
                                     gate_override=override)
        else:
            row = promotions.reject(promotion_id, current_user.username,
                                    roles=current_user.roles, comment=comment)
    except ValidationError as exc:
        flash(exc.message.partition(": ")[2] or exc.message, "error")
        return redirect(url_for("approvals.detail", promotion_id=promotion_id))
    if row.deploy_job_id:
        flash(f"Approved: job {row.deploy_job_id} {', '.join(promotions.plan(row))}.",
              "success")
        return redirect(url_for("jobs.detail", job_id=row.deploy_job_id))
    flash(f"Request {row.id} is now {row.state.lower()}.", "success")
    return redirect(url_for("approvals.index"))


@bp.post("/rollback")
@role_required(Role.ENGINEER)
def rollback() -> Any:
    """Return prod (or the given environment) to an earlier version; a deploy job does it."""
    environment = request.form.get("environment", "prod")
    job = rollbacks.rollback(environment, request.form.get("version") or None,
                             request.form.get("reason"), current_user.username,
                             roles=current_user.roles)
    flash(f"Rolling {environment} back to v{job.params.get('version')} (job {job.id}).",
          "success")
    return redirect(url_for("jobs.detail", job_id=job.id))
