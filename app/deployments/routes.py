"""Deployments page: environments with slot, version, replica health, traffic and key age;
deploy, rotate keys and roll back as jobs; an admin's audited key reveal."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, make_response, redirect, render_template, request, url_for
from flask_login import current_user

from app.auth.roles import Role
from app.auth.users import role_required, signed_in
from app.errors import AppError, NotFound, ValidationError
from app.services import deployments, jobs, models
from app.services.kinds import JobKind

logger = logging.getLogger(__name__)

bp = Blueprint("deployments", __name__, url_prefix="/deployments")


def _environment(name: str) -> str:
    if name not in deployments.environments():
        raise NotFound(f"environment {name!r} is not known")
    return name


@bp.get("/")
@signed_in
def list() -> Any:  # noqa: A001  (view names follow the list/detail/create convention)
    """Show every environment's slots, health, traffic and key age."""
    return _page()


def _page(form_errors: dict[str, dict[str, str]] | None = None,
          chosen: dict[str, str] | None = None) -> str:
    """The page, with a deploy form's errors beside its fields (by environment) if any."""
    return render_template("deployments/list.html", environments=deployments.overview(),
                           can_deploy=current_user.can(Role.ENGINEER),
                           can_reveal=current_user.can(Role.ADMIN),
                           versions=_versions(), form_errors=form_errors or {},
                           chosen=chosen or {})


def _versions() -> tuple[str, ...]:
    """Registered versions of the pipeline's model, newest first (empty if unreadable)."""
    try:
        return tuple(v.version for v in models.list_versions(models.default_model_name()))
    except AppError as exc:
        logger.info("deployments: registry unavailable: %s", exc.message)
        return ()


@bp.post("/<environment>/deploy")
@role_required(Role.ENGINEER)
def deploy(environment: str) -> Any:
    """Queue a deploy of a registered version (blank: the latest) to an environment; a bad
    version comes back as the page with the error beside the field (422)."""
    params: dict[str, Any] = {"environment": _environment(environment)}
    version = request.form.get("version", "").strip()
    try:
        if version:
            if not version.isdigit():
                raise ValidationError("version must be a version number",
                                      errors=[{"field": "version",
                                               "message": f"{version!r} is not a version number"}])
            if version not in _versions():
                raise ValidationError(f"version {version} is not registered",
                                      errors=[{"field": "version", "message":
                                               f"no version {version} is registered"}])
            params["version"] = version
        return _queue(JobKind.DEPLOY, params)
    except ValidationError as exc:
        errors = {e["field"]: e["message"] for e in exc.errors} or {"form": exc.message}
        return _page({environment: errors}, {environment: version}), 422


@bp.post("/<environment>/rollback")
@role_required(Role.ENGINEER)
def rollback(environment: str) -> Any:
    """Return the environment to its previous version, with a reason (the one rollback path)."""
    from app.services import rollbacks

    job = rollbacks.rollback(_environment(environment), request.form.get("version") or None,
                             request.form.get("reason"), current_user.username,
                             roles=current_user.roles)
    return redirect(url_for("jobs.detail", job_id=job.id))


@bp.post("/<environment>/rotate-keys")
@role_required(Role.ENGINEER)
def rotate_keys(environment: str) -> Any:
    """Queue a key rotation of the environment's active slot."""
    return _queue(JobKind.ROTATE_KEYS, {"environment": _environment(environment)})


@bp.post("/<environment>/reveal")
@role_required(Role.ADMIN)
def reveal(environment: str) -> Any:
    """Show an admin the active slot's keys once (audited; never cached)."""
    row, keys = deployments.reveal_keys(_environment(environment), current_user.username)
    response = make_response(render_template(
        "deployments/reveal.html", environment=environment, row=row,
        url=deployments.base_url(row), primary=keys.primary, secondary=keys.secondary))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/<environment>/k8s.yaml")
@role_required(Role.ENGINEER)
def manifests(environment: str) -> Any:
    """Download the active slot as Kubernetes manifests (key digests only)."""
    text = deployments.k8s_manifests(_environment(environment))
    response = make_response(text)
    response.headers["Content-Type"] = "application/yaml; charset=utf-8"
    response.headers["Content-Disposition"] = \
        f'attachment; filename="modelgate-{environment}.k8s.yaml"'
    return response


def _queue(kind: JobKind, params: dict[str, Any]) -> Any:
    job = jobs.submit(kind, params, current_user.username, roles=current_user.roles)
    return redirect(url_for("jobs.detail", job_id=job.id))
