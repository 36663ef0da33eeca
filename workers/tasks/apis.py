"""The publish job: a new revision of an environment's gateway API, made current atomically."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from workers.tasks._pipeline import check_params
from workers.tasks._runner import JobContext, run_job

MAX_RATE_LIMIT = 1_000_000


@shared_task(bind=True, name="modelgate.apis.publish", soft_time_limit=120, time_limit=150)
def publish(self: Any, job_id: str) -> None:
    """Run a publish job (params: environment, rate_limit, policy_xml; all optional)."""
    run_job(self, job_id, _publish)


def _publish(ctx: JobContext) -> dict[str, Any]:
    """Render (or take) the policy, compile it, record a revision and switch the gateway."""
    from flask import current_app

    from app.errors import ValidationError
    from app.services import apis, protected
    from app.services.kinds import JobKind

    check_params(ctx.params, ("environment", "rate_limit", "policy_xml"))
    environment = apis.check_environment(ctx.params.get("environment", "staging"))
    grant = protected.authorize_run(ctx.job_id, JobKind.PUBLISH, environment)
    if grant is not None:
        ctx.log(f"{environment} is protected; running under {grant.describe()}")
    rate_limit = ctx.params.get("rate_limit")
    if rate_limit is not None and (not isinstance(rate_limit, int) or isinstance(rate_limit, bool)
                                   or not 1 <= rate_limit <= MAX_RATE_LIMIT):
        raise ValidationError(f"params.rate_limit: must be an integer from 1 to {MAX_RATE_LIMIT}",
                              errors=[{"field": "params.rate_limit", "message": "out of range"}])
    custom = ctx.params.get("policy_xml")
    if custom is not None and not isinstance(custom, str):
        raise ValidationError("params.policy_xml: must be a policy document (a string)",
                              errors=[{"field": "params.policy_xml", "message": "not a string"}])
    ctx.progress(10, f"rendering the policy for {environment}")
    config = current_app.config
    policy_xml = custom if custom is not None else apis.render_policy(config, environment,
                                                                       rate_limit)
    ctx.check_cancelled()
    ctx.progress(40, "compiling the policy and switching the gateway")
    job = _requested_by(ctx.job_id)
    row = apis.publish(ctx.home, environment=environment, policy_xml=policy_xml, actor=job,
                       job_id=ctx.job_id)
    url = f"{str(config['GATEWAY_URL']).rstrip('/')}/{row.path}"
    ctx.log(f"published {row.api_name} revision {row.revision} at {url}/score")
    return {"api": row.api_name, "revision": row.revision, "environment": environment,
            "path": row.path, "url": url, "custom_policy": custom is not None}


def _requested_by(job_id: str) -> str:
    from app.services import jobs

    return jobs.get(job_id).requested_by
