"""The plan job and ``modelgate plan``: what the chain would create or change on the configured
backend, resource by resource, changing nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.backends.base import Backend, BackendError, Plan, PlanAction, ProvisionSpec
from app.errors import AppError
from app.pipeline_config import PipelineConfig
from app.services.rollout import Reporter

_VERBS = {PlanAction.CREATE: "create", PlanAction.UPDATE: "update",
          PlanAction.NO_CHANGE: "no change"}


def chain_spec(config: PipelineConfig) -> ProvisionSpec:
    """The provisioning spec of a pipeline configuration (the whole chain's settings)."""
    return ProvisionSpec(workspace=config.workspace.name, environments=config.environment_names,
                         settings=config.to_dict())


def make_plan(target: Backend, config: PipelineConfig, offline: bool) -> Plan:
    """Ask the backend for the plan of the configuration."""
    return target.plan(chain_spec(config), offline=offline)


def plan_lines(plan: Plan) -> list[str]:
    """The plan as aligned text lines, changes indented under their resource, then a total."""
    width = max((len(item.kind) for item in plan.items), default=0)
    lines = []
    for item in plan.items:
        note = f"  ({item.note})" if item.note else ""
        lines.append(f"{_VERBS[item.action]:<9}  {item.kind:<{width}}  {item.name}{note}")
        lines.extend(f"{'':<9}    ~ {change}" for change in item.changes)
    counts = plan.counts()
    source = ("offline: nothing was read, everything is listed as to be created"
              if plan.offline else f"read from the {plan.backend} backend")
    lines.append(f"plan: {counts['create']} to create, {counts['update']} to update, "
                 f"{counts['no change']} unchanged ({source})")
    return lines


def plan_dict(plan: Plan) -> dict[str, Any]:
    """The plan as the job result and ``modelgate plan --json`` print it."""
    return {"backend": plan.backend, "offline": plan.offline, "counts": plan.counts(),
            "items": [{"kind": i.kind, "name": i.name, "action": i.action.value,
                       "changes": list(i.changes), "note": i.note} for i in plan.items]}


def run_plan(job: Reporter, params: Mapping[str, Any]) -> dict[str, Any]:
    """The plan job: log the plan line by line and return it."""
    from app.services.backend import backend
    from app.services.models import pipeline

    config = pipeline()
    offline = bool(params.get("offline", False))
    target = backend()
    job.progress(10, f"reading the {target.name} backend" if not offline else "offline plan")
    try:
        plan = make_plan(target, config, offline)
    except BackendError as exc:
        raise AppError(str(exc)) from exc
    for line in plan_lines(plan):
        job.log(line)
    return plan_dict(plan)
