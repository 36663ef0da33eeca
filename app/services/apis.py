"""Published gateway APIs: revisions in the database, the current one in the gateway's config.

Each publish records a NEW revision; exactly one revision per API is current. The gateway's
config.json is changed first (one locked, validated, atomic write via gateway_config), then the
database marks the revision current, so the database never claims a revision the gateway
refused. Rolling back re-applies an earlier revision's stored policy and makes it current.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update

from app.db import ApiRevision
from app.errors import Conflict, NotFound, ValidationError
from app.extensions import db
from app.gateway.template import ISSUER_URL_REF
from app.services import audit, gateway_config, protected
from app.services.audit import AuditAction

API_BASE_NAME = "credit-risk"
ENVIRONMENTS = ("staging", "prod")
OPERATIONS = ({"id": "score", "method": "POST", "url_template": "/score"},)


class PublishRefused(ValidationError):
    """Publishing cannot happen as asked (no deployment, bad policy, unknown environment)."""


@dataclass(frozen=True)
class IssuerSettings:
    """What the default policy checks: the token issuer and the API audience."""

    issuer: str
    audience: str


def api_name(environment: str) -> str:
    """The gateway API name of an environment (prod keeps the plain name)."""
    return API_BASE_NAME if environment == "prod" else f"{API_BASE_NAME}-{environment}"


def api_path(environment: str) -> str:
    """The gateway path of an environment (internal-contracts.md: staging/credit-risk)."""
    return API_BASE_NAME if environment == "prod" else f"{environment}/{API_BASE_NAME}"


def check_environment(environment: Any) -> str:
    """Return a known environment name or raise a ValidationError naming the choices."""
    if environment not in ENVIRONMENTS:
        raise PublishRefused(
            f"params.environment: unknown environment {environment!r}; use one of: "
            f"{', '.join(ENVIRONMENTS)}",
            errors=[{"field": "params.environment", "message": "unknown environment"}])
    return str(environment)


def issuer_settings(config: Mapping[str, Any]) -> IssuerSettings:
    """The issuer and audience access tokens carry, for the local issuer or Entra ID."""
    from app.auth.oidc import OidcSettings

    # Built directly (not from_config): publishing needs no client secret.
    identity: Any = str(config.get("IDENTITY") or "local")
    settings = OidcSettings(identity=identity, client_id="",
                            issuer_url=str(config.get("ISSUER_URL") or "").rstrip("/"),
                            tenant_id=str(config.get("TENANT_ID") or ""),
                            api_client_id=str(config.get("API_CLIENT_ID") or ""))
    return IssuerSettings(settings.issuer, settings.api_audience)


def render_policy(config: Mapping[str, Any], environment: str,
                  rate_limit: int | None = None) -> str:
    """The default policy for an environment: issuer, audience, role, per-caller limit."""
    from app.gateway.template import DEFAULT_ROLE, render_default_policy

    idp = issuer_settings(config)
    limit = rate_limit if rate_limit is not None else int(config.get("RATE_LIMIT") or 6000)
    # the issuer by name: whoever starts the gateway sets it (restarts on other ports)
    return render_default_policy(issuer=ISSUER_URL_REF, environment=environment,
                                 audience=idp.audience, role=DEFAULT_ROLE, rate_limit=limit)


def _has_active_deployment(environment: str) -> bool:
    """Whether a deploy job left an ACTIVE slot serving the environment."""
    from app.services import deployments

    return deployments.active(environment) is not None


def backend_url(home: Path, environment: str) -> str:
    """The environment's backend URL as the deploy job set it, or refuse to publish."""
    named = gateway_config.read(home)["named_values"]
    url_name = gateway_config.backend_url_name(environment)
    key_name = gateway_config.backend_key_name(environment)
    if not _has_active_deployment(environment) or url_name not in named or key_name not in named:
        raise PublishRefused(
            f"{environment} has no active deployment, so there is nothing to publish; "
            f"run a deploy job for {environment} first")
    return str(named[url_name]["value"])


def publish(home: Path, *, environment: str, policy_xml: str, actor: str,
            job_id: str | None = None) -> ApiRevision:
    """Record a new revision of the environment's API and make it current in the gateway.

    Raises:
        PublishRefused: no active deployment, or the policy does not compile (the message
            names the unsupported element).
    """
    environment = check_environment(environment)
    url = backend_url(home, environment)
    name = api_name(environment)
    row = None
    if job_id is not None:  # a redelivered job re-applies its own revision
        row = db.session.scalar(select(ApiRevision).where(ApiRevision.job_id == job_id))
    if row is None:
        last = db.session.scalar(select(func.max(ApiRevision.revision))
                                 .where(ApiRevision.api_name == name)) or 0
        row = ApiRevision(api_name=name, path=api_path(environment), environment=environment,
                          revision=last + 1, policy_xml=policy_xml, created_by=actor,
                          is_current=False, job_id=job_id)
        db.session.add(row)
        db.session.flush()
    _make_current(home, row, url)
    audit.record(actor, AuditAction.API_PUBLISHED, f"api:{name}",
                 {"revision": row.revision, "environment": environment, "path": row.path,
                  "job_id": job_id})
    return row


def rollback(home: Path, revision_id: int, actor: str) -> ApiRevision:
    """Make an earlier revision current again (its stored policy, re-validated).

    Raises:
        ProtectedEnvironment: the API serves a protected environment (request a promotion).
    """
    row = db.session.get(ApiRevision, revision_id)
    if row is None:
        raise NotFound(f"API revision {revision_id} does not exist")
    protected.check_api_rollback(row.environment)
    if row.is_current:
        raise Conflict(f"{row.api_name} revision {row.revision} is already current")
    previous = current(row.api_name)
    _make_current(home, row, backend_url(home, row.environment))
    audit.record(actor, AuditAction.API_ROLLED_BACK, f"api:{row.api_name}",
                 {"revision": row.revision, "environment": row.environment,
                  "from_revision": previous.revision if previous else None})
    return row


def rollback_to(home: Path, name: str, revision: int, actor: str) -> ApiRevision:
    """Roll an API (by name) back to one of its revision numbers."""
    row = db.session.scalar(select(ApiRevision).where(ApiRevision.api_name == name,
                                                      ApiRevision.revision == revision))
    if row is None:
        raise NotFound(f"API {name!r} has no revision {revision}")
    return rollback(home, row.id, actor)


def serving_rules(name: str) -> dict[str, Any]:
    """What the gateway checks an API's policy against (app/gateway/safety.py): the pipeline
    file's allowed backends and anonymous APIs, and the issuer and audience tokens carry."""
    from flask import current_app

    from app.pipeline_config import load_pipeline_config

    gateway = load_pipeline_config().gateway
    idp = issuer_settings(current_app.config)
    return {"anonymous": name in gateway.anonymous_apis,
            "allowed_backends": list(gateway.allowed_backends),
            "issuer": ISSUER_URL_REF, "audience": idp.audience}


def _make_current(home: Path, row: ApiRevision, url: str) -> None:
    """Write the revision to the gateway, then mark it current; undo the row on refusal."""
    from flask import current_app

    from app.gateway.config import ConfigError
    from app.gateway.policy import PolicyError
    from app.pipeline_config import PipelineConfigError

    try:
        gateway_config.set_issuer_url(home, issuer_settings(current_app.config).issuer)
        gateway_config.upsert_api(home, {
            "name": row.api_name, "path": row.path, "revision": row.revision,
            "environment": row.environment, "backend_url": url,
            "operations": [dict(op) for op in OPERATIONS], "policy_xml": row.policy_xml,
            **serving_rules(row.api_name)})
    except (ConfigError, PolicyError, PipelineConfigError) as exc:
        db.session.rollback()
        raise PublishRefused(f"the gateway refused the policy: {exc}",
                             errors=[{"field": "policy", "message": str(exc)}]) from None
    db.session.execute(update(ApiRevision).where(ApiRevision.api_name == row.api_name,
                                                 ApiRevision.id != row.id)
                       .values(is_current=False))
    row.is_current = True
    db.session.commit()


def current(name: str) -> ApiRevision | None:
    """The current revision of an API, if it was ever published."""
    return db.session.scalar(select(ApiRevision).where(ApiRevision.api_name == name,
                                                       ApiRevision.is_current.is_(True)))


def list_current() -> list[ApiRevision]:
    """The current revision of every published API, by name."""
    return list(db.session.scalars(select(ApiRevision).where(ApiRevision.is_current.is_(True))
                                   .order_by(ApiRevision.api_name)))


def revisions_of(name: str) -> list[ApiRevision]:
    """One API's revisions, newest first."""
    return list(db.session.scalars(select(ApiRevision).where(ApiRevision.api_name == name)
                                   .order_by(ApiRevision.revision.desc())))


def list_revisions(limit: int = 200) -> list[ApiRevision]:
    """Revisions of every API, newest first."""
    return list(db.session.scalars(select(ApiRevision)
                                   .order_by(ApiRevision.api_name, ApiRevision.revision.desc())
                                   .limit(limit)))


def to_dict(row: ApiRevision, gateway_url: str | None = None) -> dict[str, Any]:
    """Serialise a revision for the REST API (the policy is not secret: named values hide keys)."""
    out: dict[str, Any] = {
        "name": row.api_name, "path": row.path, "environment": row.environment,
        "revision": row.revision, "is_current": row.is_current, "created_by": row.created_by,
        "created_at": row.created_at.isoformat(), "job_id": row.job_id,
        "operations": [dict(op) for op in OPERATIONS],
    }
    if gateway_url is not None:
        out["url"] = f"{gateway_url.rstrip('/')}/{row.path}"
    return out
