"""Protected environments: the one rule deciding which changes may be queued and run.

An environment marked ``protected: true`` in the pipeline file (prod by default) changes what
its callers get only through an approved promotion. Every job submission passes
:func:`check_submit` and every API revision rollback passes :func:`check_api_rollback`; both
refuse a deploy, a publish (a new API revision), a pipeline reaching those stages, or an API
rollback of a protected environment, for every principal, admins included.

The only ways through are the grants the services themselves create, never a route or a job
parameter: an approved promotion's job (``promotions.approve``) and an engineer's audited
break-glass rollback to a version that served the environment before (``rollbacks``). Both
submit with ``jobs.submit_granted``, which links the job to its promotion or audit record
*before* it is queued; the worker re-checks that link (:func:`authorize_run`) before acting,
so a replayed, retried or crafted job of a protected environment fails instead of running.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from app.db import Promotion
from app.errors import Forbidden
from app.extensions import db
from app.pipeline_config import PipelineConfigError, load_pipeline_config
from app.services import audit
from app.services.audit import AuditAction
from app.services.kinds import JobKind

logger = logging.getLogger(__name__)

PROMOTION_PAGE = "/approvals/new"
# Pipeline stages that change what callers get (provision and train change nothing served).
_SERVING_STAGES = ("deploy", "publish")
_FALLBACK = frozenset({"prod"})


class ProtectedEnvironment(Forbidden):
    """A change to a protected environment outside an approved promotion (403)."""

    title = "Protected environment"

    def __init__(self, environment: str, what: str) -> None:
        super().__init__(
            f"{environment} is a protected environment, so {what} runs only as the job of an "
            f"approved promotion. Request a promotion at {PROMOTION_PAGE} "
            "(or POST /api/v1/promotions); another approver has to approve it.",
            headers={"Link": f'<{PROMOTION_PAGE}>; rel="help"; title="Request a promotion"'})
        self.environment = environment


@dataclass(frozen=True)
class Grant:
    """Why a job of a protected environment may run: its promotion or its rollback record."""

    kind: str  # "promotion" or "rollback"
    reference: str  # the promotion id, or the audit event id of the rollback
    actor: str  # who approved (promotion) or who rolled back

    def describe(self) -> str:
        """A log line naming the grant."""
        if self.kind == "promotion":
            return f"promotion {self.reference} approved by {self.actor}"
        return f"break-glass rollback by {self.actor} (audit event {self.reference})"


def protected_environments() -> frozenset[str]:
    """The environments marked protected in the pipeline file.

    A file that cannot be read fails closed: prod stays protected (the jobs then fail on the
    file, naming the bad key).
    """
    try:
        return load_pipeline_config().protected_environments
    except PipelineConfigError as exc:
        logger.warning("pipeline configuration unreadable (%s); treating prod as protected",
                       exc.key)
        return _FALLBACK


def is_protected(environment: Any) -> bool:
    """Whether a change to `environment` needs an approved promotion."""
    return isinstance(environment, str) and environment in protected_environments()


def _environment_of(params: dict[str, Any]) -> Any:
    return params.get("environment", "staging")


def check_submit(kind: JobKind, params: dict[str, Any]) -> None:
    """Refuse, before anything is recorded, a job that would change a protected environment.

    Raises:
        ProtectedEnvironment: a deploy, publish or serving pipeline of a protected environment.
    """
    environment = _environment_of(params)
    if not is_protected(environment):
        return
    if kind is JobKind.DEPLOY:
        raise ProtectedEnvironment(environment, f"a deploy to {environment}")
    if kind is JobKind.PUBLISH:
        raise ProtectedEnvironment(environment, f"a new API revision of {environment}")
    if kind is JobKind.PIPELINE and params.get("until", "publish") in _SERVING_STAGES:
        raise ProtectedEnvironment(environment,
                                   f"a pipeline run that deploys or publishes to {environment}")


def check_api_rollback(environment: str) -> None:
    """Refuse an API revision rollback of a protected environment.

    Raises:
        ProtectedEnvironment: the revision belongs to a protected environment.
    """
    if is_protected(environment):
        raise ProtectedEnvironment(environment, f"an API revision rollback of {environment}")


def grant_of(job_id: str) -> Grant | None:
    """The approved promotion or the audited rollback that queued this job, if any."""
    promotion = db.session.scalar(select(Promotion).where(Promotion.deploy_job_id == job_id))
    if promotion is not None:
        db.session.refresh(promotion)
        if promotion.state == "APPROVED" and promotion.decided_by:
            return Grant("promotion", promotion.id, promotion.decided_by)
        return None
    for event in audit.events(action=AuditAction.ROLLED_BACK.value, limit=500):
        if (event.details or {}).get("deploy_job_id") == job_id:
            return Grant("rollback", str(event.id), event.actor)
    return None


def authorize_run(job_id: str, kind: JobKind, environment: str) -> Grant | None:
    """The worker's check before a deploy or publish acts: None for unprotected environments.

    Raises:
        ProtectedEnvironment: the environment is protected and no grant links this job.
    """
    if not is_protected(environment):
        return None
    grant = grant_of(job_id)
    if grant is None:
        what = (f"a deploy to {environment}" if kind is JobKind.DEPLOY
                else f"a new API revision of {environment}")
        raise ProtectedEnvironment(environment, what)
    return grant
