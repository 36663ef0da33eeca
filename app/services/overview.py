"""The dashboard's read model: pipeline stages, environment cards and API traffic over time.

Everything here only reads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from app.db import Job
from app.extensions import db
from app.services import traffic
from app.services.backend import backend, environment_names
from app.services.traffic import SeriesPoint

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class Stage:
    """One pipeline stage as the dashboard shows it."""

    key: str
    kind: str
    title: str
    what: str
    action: str
    # The pipeline runs on staging; prod changes only through promotions (never a stage card).
    environment: str = "staging"


STAGES: tuple[Stage, ...] = (
    Stage("infrastructure", "provision", "Infrastructure", "workspace, dataset, environments",
          "Provision"),
    Stage("model", "train", "Model", "train, evaluate and register", "Train"),
    Stage("deployment", "deploy", "Deployment", "blue/green slot behind keys",
          "Deploy to staging"),
    Stage("api", "publish", "API", "gateway revision with JWT policy", "Publish staging"),
)
STAGE_KINDS: frozenset[str] = frozenset(s.kind for s in STAGES)


@dataclass(frozen=True)
class StageState:
    """A stage and the last job that ran it (None: never run)."""

    stage: Stage
    job: Job | None
    summary: str

    @property
    def status(self) -> str:
        """The last job's status, or NOT_RUN."""
        return self.job.status if self.job is not None else "NOT_RUN"


@dataclass(frozen=True)
class EnvironmentCard:
    """What the dashboard shows for one environment; None fields are not known (yet)."""

    name: str
    deployment: Mapping[str, Any] | None = None
    model_metrics: Mapping[str, Any] = field(default_factory=dict)
    api: Mapping[str, Any] | None = None
    traffic: Any = None
    series: tuple[SeriesPoint, ...] = ()
    protected: bool = False


# --------------------------------------------------------------------------- stages


def last_job(kind: str, environment: str | None = None) -> Job | None:
    """The newest job of a kind, whether queued alone or by a pipeline; with `environment`,
    the newest one acting on that environment (params.environment, staging by default)."""
    query = select(Job).where(Job.kind == kind).order_by(Job.created_at.desc(), Job.id)
    if environment is None:
        return db.session.scalar(query.limit(1))
    for job in db.session.scalars(query.limit(200)):
        if (job.params or {}).get("environment", "staging") == environment:
            return job
    return None


def job_summary(job: Job | None) -> str:
    """One line on what a finished job produced (from its result), or where it stands."""
    if job is None:
        return "not run yet"
    result = job.result or {}
    if job.status == "FAILED":
        return (job.error or "failed").splitlines()[0][:160]
    if job.status != "SUCCEEDED":
        return job.step
    found = result.get("model")
    model: dict[str, Any] = found if isinstance(found, dict) else {}
    if job.kind == "provision":
        return f"workspace {result.get('workspace', '?')} on {result.get('backend', '?')}"
    if job.kind == "train":
        return f"{model.get('name', '?')} version {model.get('version', '?')}"
    if job.kind == "deploy":
        return (f"{model.get('name', '?')} v{model.get('version', '?')} on the "
                f"{result.get('slot', '?')} slot of {result.get('environment', '?')}")
    if job.kind == "publish":
        return f"{result.get('api', '?')} revision {result.get('revision', '?')}"
    if job.kind == "pipeline":
        return f"{result.get('until', 'publish')} on {result.get('environment', '?')}"
    return job.step


def stages() -> list[StageState]:
    """The four stages with their last jobs."""
    out = []
    for stage in STAGES:
        acts_on_environment = stage.kind in ("deploy", "publish")
        job = last_job(stage.kind, stage.environment if acts_on_environment else None)
        out.append(StageState(stage, job, job_summary(job)))
    return out


def stage_dict(state: StageState) -> dict[str, Any]:
    """Serialise a stage for the dashboard's polling fallback."""
    from app.services import jobs

    return {"key": state.stage.key, "kind": state.stage.kind, "status": state.status,
            "environment": state.stage.environment,
            "summary": state.summary,
            "job": None if state.job is None else jobs.to_dict(state.job)}


# --------------------------------------------------------------------------- environments


def package_metrics(name: str, version: str) -> dict[str, Any]:
    """Headline metrics of a model package (metrics.json), empty when it is not cached."""
    from app.services.models import package_dir

    path = package_dir(name, version) / "metrics.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    heldout = data.get("heldout") or {}
    cv = data.get("cv") or {}
    return {"family": data.get("family"), "roc_auc": heldout.get("roc_auc"),
            "cv_roc_auc": cv.get("roc_auc_mean"), "accuracy": heldout.get("accuracy"),
            "recall_bad": heldout.get("recall_bad"), "threshold": data.get("threshold"),
            "expected_cost": heldout.get("expected_cost"),
            "expected_cost_at_0_5": heldout.get("expected_cost_at_0_5"),
            "cost_matrix": data.get("cost_matrix") or {}}


def environment_cards() -> list[EnvironmentCard]:
    """Staging and prod: deployment, model metrics, API revision and traffic."""
    from app.services import apis, deployments, protected

    status = backend().slots_report()
    figures, series = traffic.per_minute()
    guarded = protected.protected_environments()
    cards = []
    for env in environment_names():
        deployment = None
        model: dict[str, Any] = {}
        row = deployments.active_row(env)
        if row is not None:
            deployment = deployments.to_dict(row, status)
            model = package_metrics(row.model_name, row.model_version)
        api = None
        api_name = apis.api_name(env)
        current = apis.current(api_name)
        if current is not None:
            api = {"name": current.api_name, "revision": current.revision,
                   "path": current.path, "published_by": current.created_by,
                   "published_at": current.created_at, "job_id": current.job_id}
        cards.append(EnvironmentCard(
            name=env, deployment=deployment, model_metrics=model, api=api,
            traffic=figures.get(api_name), series=series.get(api_name, ()),
            protected=env in guarded))
    return cards


# --------------------------------------------------------------------------- job results


@dataclass(frozen=True)
class Link:
    """Something a job produced, with where to see it."""

    label: str
    endpoint: str
    values: Mapping[str, Any]
    anchor: str | None = None


def produced(job: Job, children: list[Job] | None = None) -> list[Link]:
    """Links to what a job produced (model version, deployment, API revision), from results."""
    links: list[Link] = []
    result = job.result if job.status == "SUCCEEDED" and isinstance(job.result, dict) else {}
    model = result.get("model") if isinstance(result.get("model"), dict) else None
    if job.kind in ("train", "deploy") and model and model.get("name") and model.get("version"):
        links.append(Link(f"Model {model['name']} version {model['version']}",
                          "registry.detail",
                          {"name": model["name"], "version": str(model["version"])}))
    if job.kind == "deploy" and result.get("environment"):
        from flask import current_app

        # The deployments page where there is one; the dashboard's environment card otherwise.
        page = ("deployments.list" if "deployments.list" in current_app.view_functions
                else "dashboard.index")
        links.append(Link(f"Deployment: {result.get('slot', '?')} slot of "
                          f"{result['environment']}", page, {}, f"env-{result['environment']}"))
    # A publish job's revision, or the one an approved promotion's deploy published (stage 2).
    published = result if job.kind == "publish" else result.get("published")
    if isinstance(published, dict) and published.get("api"):
        links.append(Link(f"API {published['api']} revision {published.get('revision', '?')}",
                          "apis.list", {}, f"api-{published['api']}"))
    for child in children or []:
        links.extend(produced(child))
    unique: dict[tuple[str, str, str | None], Link] = {}
    for link in links:  # train and deploy both name the model version: show it once
        unique.setdefault((link.endpoint, repr(sorted(link.values.items())), link.anchor), link)
    return list(unique.values())
