"""The job kinds: their Celery task names, the role that may queue them, their parameters."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.auth.roles import Role
from app.services import params as p


class JobKind(enum.StrEnum):
    """Kinds of background job (the panel REST API's `kind`)."""

    PROVISION = "provision"
    TRAIN = "train"
    DEPLOY = "deploy"
    PUBLISH = "publish"
    ROTATE_KEYS = "rotate-keys"
    PIPELINE = "pipeline"
    SELFCHECK = "selfcheck"
    PLAN = "plan"


@dataclass(frozen=True)
class KindSpec:
    """How a kind runs: its task, who may queue it, a human title, and its parameters
    (every one optional; ``together`` checks combinations).

    ``backend_time_limits`` names, per backend, the configuration key holding the kind's soft
    time limit in seconds on that backend, when the task's own limit (its decorator's) is too
    short there: provisioning on Azure waits 30-75 minutes for API Management alone, training
    follows an Azure ML job of up to 2 hours, a deploy waits 20+ minutes for readiness, a key
    rotation waits for API Management to take the new key (app/config.py says why each).
    """

    kind: JobKind
    task_name: str
    role: Role
    title: str
    params: tuple[p.Param, ...] = ()
    together: Callable[[Mapping[str, Any]], None] | None = None
    backend_time_limits: Mapping[str, str] = field(default_factory=dict)

    def check_params(self, params: Mapping[str, Any]) -> None:
        """Refuse an unknown parameter or a bad value (ValidationError naming the field)."""
        p.check(params, self.params, self.together)


_ENVIRONMENT = p.Param("environment", p.environment, "the environment (default staging)")

KIND_SPECS: dict[JobKind, KindSpec] = {
    spec.kind: spec
    for spec in (
        KindSpec(JobKind.PROVISION, "modelgate.infra.provision", Role.ENGINEER, "Provision",
                 (p.Param("teardown", p.boolean, "remove the workspace instead"),),
                 backend_time_limits={"azure": "AZURE_PROVISION_TIME_LIMIT_SECONDS"}),
        KindSpec(JobKind.PLAN, "modelgate.infra.plan", Role.ENGINEER, "Plan",
                 (p.Param("offline", p.boolean,
                          "read nothing: list every resource as to be created"),)),
        KindSpec(JobKind.TRAIN, "modelgate.models.train", Role.ENGINEER, "Train and register",
                 (p.Param("dataset_version", p.positive_integer,
                          "the dataset version (default: the latest)"),
                  p.Param("model", p.training_settings, "overrides of the model: section")),
                 backend_time_limits={"azure": "AZURE_TRAIN_TIME_LIMIT_SECONDS"}),
        KindSpec(JobKind.DEPLOY, "modelgate.deployments.deploy", Role.ENGINEER, "Deploy",
                 (_ENVIRONMENT,
                  p.Param("version", p.model_version, "the version (default: the latest)"),
                  p.Param("rollback", p.boolean, "return to the previous version")),
                 p.version_or_rollback,
                 backend_time_limits={"azure": "AZURE_DEPLOY_TIME_LIMIT_SECONDS"}),
        KindSpec(JobKind.PUBLISH, "modelgate.apis.publish", Role.ENGINEER, "Publish API",
                 (_ENVIRONMENT,
                  p.Param("rate_limit", p.rate_limit, "calls per minute per caller"),
                  p.Param("policy_xml", p.policy_xml, "a policy instead of the default"))),
        KindSpec(JobKind.ROTATE_KEYS, "modelgate.deployments.rotate_keys", Role.ENGINEER,
                 "Rotate keys", (_ENVIRONMENT,),
                 backend_time_limits={"azure": "AZURE_ROTATE_KEYS_TIME_LIMIT_SECONDS"}),
        KindSpec(JobKind.PIPELINE, "modelgate.pipeline.run", Role.ENGINEER, "Pipeline",
                 (p.Param("until", p.stage, "the last stage (default publish)"),
                  _ENVIRONMENT),
                 # the parent follows its children one after the other: on Azure at least
                 # provision's, train's and deploy's limits together
                 backend_time_limits={"azure": "AZURE_PIPELINE_TIME_LIMIT_SECONDS"}),
        KindSpec(JobKind.SELFCHECK, "modelgate.jobs.selfcheck", Role.ENGINEER, "Self-check",
                 (p.Param("steps", p.integer_range(1, 100), "how many steps"),
                  p.Param("step_seconds", p.number_range(0, 30), "seconds per step"),
                  p.Param("fail", p.text, "fail at the end with this message"),
                  p.Param("crash", p.text, "'always': the worker process dies"))),
    )
}


# A task's hard limit comes this long after its soft limit (the job records the timeout).
HARD_LIMIT_MARGIN_SECONDS = 60


def time_limit_options(kind: JobKind, config: Mapping[str, Any]) -> dict[str, int]:
    """The ``send_task`` options overriding the task's own time limits on the configured
    backend (``config["BACKEND"]``), e.g. ``{"soft_time_limit": 7200, "time_limit": 7260}``;
    empty when the task's own limits hold."""
    key = KIND_SPECS[kind].backend_time_limits.get(str(config.get("BACKEND", "")))
    if not key:
        return {}
    soft = int(config[key])
    return {"soft_time_limit": soft, "time_limit": soft + HARD_LIMIT_MARGIN_SECONDS}


def longest_time_limit(config: Mapping[str, Any]) -> int:
    """The longest hard time limit any kind gets on the configured backend from the
    configuration (0 when every kind keeps its task's own limit)."""
    return max((opts["time_limit"] for kind in KIND_SPECS
                if (opts := time_limit_options(kind, config))), default=0)
