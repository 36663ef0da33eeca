"""Published gateway APIs: revisions in the database, the current one in the backend's gateway.

Each publish records a NEW revision; exactly one revision per API is current. The backend's
gateway gets the revision and makes it current first (validated, atomic), then the database
marks the revision current, so the database never claims a revision the gateway refused.
Rolling back re-applies an earlier revision's stored policy and makes it current. API names,
paths and environments come from the pipeline file (``gateway``, ``environments``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update

from app.backends.base import SCORE_OPERATION as SCORE
from app.backends.base import ApiOperation, ApiSpec, PolicyRefused, ResourceNotFound
from app.db import ApiRevision
from app.errors import Conflict, NotFound, ValidationError
from app.extensions import db
from app.gateway.template import ISSUER_URL_NAME, ISSUER_URL_REF
from app.services import audit, protected
from app.services.audit import AuditAction
from app.services.backend import api_name, api_path, backend, environment_names, pipeline

OPERATIONS: tuple[ApiOperation, ...] = (SCORE,)


class PublishRefused(ValidationError):
    """Publishing cannot happen as asked (no deployment, bad policy, unknown environment)."""


@dataclass(frozen=True)
class IssuerSettings:
    """What the default policy checks: the token issuer and the API's audience forms (Entra
    ID: ``api://<app id>`` first, then the bare application id its v2 tokens carry), and the
    ``typ`` its access tokens carry (at+jwt; Entra ID's: JWT), which the gateway checks."""

    issuer: str
    audiences: tuple[str, ...]
    access_token_type: str


def check_environment(environment: Any) -> str:
    """Return a known environment name or raise a ValidationError naming the choices."""
    names = environment_names()
    if environment not in names:
        raise PublishRefused(
            f"params.environment: unknown environment {environment!r}; use one of: "
            f"{', '.join(names)}",
            errors=[{"field": "params.environment", "message": "unknown environment"}])
    return str(environment)


def issuer_settings(config: Mapping[str, Any]) -> IssuerSettings:
    """The issuer, audiences and typ access tokens carry, for the local issuer or Entra ID
    (only its v2 issuer, ``https://login.microsoftonline.com/<tenant>/v2.0``)."""
    from app.auth.oidc import OidcSettings

    # Built directly (not from_config): publishing needs no client secret.
    identity: Any = str(config.get("IDENTITY") or "local")
    settings = OidcSettings(identity=identity, client_id="",
                            issuer_url=str(config.get("ISSUER_URL") or "").rstrip("/"),
                            tenant_id=str(config.get("TENANT_ID") or ""),
                            api_client_id=str(config.get("API_CLIENT_ID") or ""))
    return IssuerSettings(settings.issuer, tuple(settings.api_audiences),
                          settings.access_token_type)


def render_policy(config: Mapping[str, Any], environment: str,
                  rate_limit: int | None = None) -> str:
    """The default policy for an environment: issuer, audiences, role, per-caller limit."""
    from app.gateway.template import DEFAULT_ROLE, render_default_policy

    idp = issuer_settings(config)
    limit = rate_limit if rate_limit is not None else int(config.get("RATE_LIMIT") or 6000)
    # the issuer by name: whoever starts the gateway sets it (restarts on other ports)
    return render_default_policy(issuer=ISSUER_URL_REF, environment=environment,
                                 audience=idp.audiences, role=DEFAULT_ROLE, rate_limit=limit)


def _require_deployment(environment: str) -> None:
    """Refuse to publish an environment no deploy job left serving."""
    from app.services import deployments

    if deployments.active(environment) is None:
        raise _nothing_to_publish(environment)


def _nothing_to_publish(environment: str) -> PublishRefused:
    return PublishRefused(f"{environment} has no active deployment, so there is nothing to "
                          f"publish; run a deploy job for {environment} first")


def publish(*, environment: str, policy_xml: str, actor: str,
            job_id: str | None = None) -> ApiRevision:
    """Record a new revision of the environment's API and make it current in the gateway.

    Raises:
        PublishRefused: no active deployment, or the policy does not compile (the message
            names the unsupported element).
    """
    environment = check_environment(environment)
    _require_deployment(environment)
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
    _make_current(row)
    audit.record(actor, AuditAction.API_PUBLISHED, f"api:{name}",
                 {"revision": row.revision, "environment": environment, "path": row.path,
                  "job_id": job_id})
    return row


def rollback(revision_id: int, actor: str) -> ApiRevision:
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
    _require_deployment(row.environment)
    _make_current(row)
    audit.record(actor, AuditAction.API_ROLLED_BACK, f"api:{row.api_name}",
                 {"revision": row.revision, "environment": row.environment,
                  "from_revision": previous.revision if previous else None})
    return row


def rollback_to(name: str, revision: int, actor: str) -> ApiRevision:
    """Roll an API (by name) back to one of its revision numbers."""
    row = db.session.scalar(select(ApiRevision).where(ApiRevision.api_name == name,
                                                      ApiRevision.revision == revision))
    if row is None:
        raise NotFound(f"API {name!r} has no revision {revision}")
    return rollback(row.id, actor)


def identity_rules(config: Mapping[str, Any]) -> dict[str, Any]:
    """The serving rules the identity settings give an API document: the issuer (by name), the
    audiences and the access-token ``typ`` its tokens carry (absent in older documents: at+jwt).
    """
    idp = issuer_settings(config)
    return {"issuer": ISSUER_URL_REF, "audiences": list(idp.audiences),
            "access_token_type": idp.access_token_type}


def serving_rules(name: str) -> dict[str, Any]:
    """What the gateway checks an API's policy against (app/gateway/safety.py): the pipeline
    file's allowed backends and anonymous APIs, and the issuer, audiences and typ tokens
    carry."""
    from flask import current_app

    gateway = pipeline().gateway
    return {"anonymous": name in gateway.anonymous_apis,
            "allowed_backends": list(gateway.allowed_backends),
            **identity_rules(current_app.config)}


def _make_current(row: ApiRevision) -> None:
    """Publish the revision to the gateway (checked against today's serving rules) and make it
    current there, then mark it current here; undo the row on refusal."""
    from flask import current_app

    target = backend()
    spec = ApiSpec(name=row.api_name, path=row.path, environment=row.environment,
                   revision=row.revision, policy_xml=row.policy_xml, operations=OPERATIONS,
                   rules=serving_rules(row.api_name),
                   named_values={ISSUER_URL_NAME: issuer_settings(current_app.config).issuer})
    try:
        target.publish_revision(spec)
        target.make_revision_current(row.api_name, row.revision)
    except PolicyRefused as exc:
        db.session.rollback()
        raise PublishRefused(f"the gateway refused the policy: {exc}",
                             errors=[{"field": "policy", "message": str(exc)}]) from None
    except ResourceNotFound:
        db.session.rollback()
        raise _nothing_to_publish(row.environment) from None
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
        "operations": [{"id": op.id, "method": op.method, "url_template": op.url_template}
                       for op in OPERATIONS],
    }
    if gateway_url is not None:
        out["url"] = f"{gateway_url.rstrip('/')}/{row.path}"
    return out


def run_publish(job: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """The publish job: render (or take) the policy, compile it, record a revision and make it
    current; ``params`` were checked at submit (KindSpec)."""
    from flask import current_app

    from app.services import jobs
    from app.services.kinds import JobKind

    environment = check_environment(params.get("environment", "staging"))
    grant = protected.authorize_run(job.job_id, JobKind.PUBLISH, environment)
    if grant is not None:
        job.log(f"{environment} is protected; running under {grant.describe()}")
    custom = params.get("policy_xml")
    job.progress(10, f"rendering the policy for {environment}")
    config = current_app.config
    policy_xml = custom if custom is not None else render_policy(config, environment,
                                                                 params.get("rate_limit"))
    job.check_cancelled()
    job.progress(40, "compiling the policy and switching the gateway")
    row = publish(environment=environment, policy_xml=policy_xml,
                  actor=jobs.get(job.job_id).requested_by, job_id=job.job_id)
    url = f"{str(config['GATEWAY_URL']).rstrip('/')}/{row.path}"
    job.log(f"published {row.api_name} revision {row.revision} at {url}/score")
    return {"api": row.api_name, "revision": row.revision, "environment": environment,
            "path": row.path, "url": url, "custom_policy": custom is not None}


def publish_default(stage: Any, environment: str) -> dict[str, Any]:
    """Publish the default policy of an environment as a new revision (a stage of a job)."""
    from flask import current_app

    from app.services import jobs

    stage.progress(0, f"rendering the default policy for {environment}")
    policy_xml = render_policy(current_app.config, environment)
    stage.progress(40, "compiling the policy and switching the gateway")
    row = publish(environment=environment, policy_xml=policy_xml,
                  actor=jobs.get(stage.job_id).requested_by, job_id=stage.job_id)
    url = f"{str(current_app.config['GATEWAY_URL']).rstrip('/')}/{row.path}"
    stage.log(f"published {row.api_name} revision {row.revision} at {url}/score")
    return {"api": row.api_name, "revision": row.revision, "environment": environment,
            "path": row.path, "url": url}
