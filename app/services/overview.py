"""The dashboard's read model: pipeline stages, environment cards and API traffic over time.

Everything here only reads.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from sqlalchemy import select

from app.db import Job
from app.extensions import db

logger = logging.getLogger(__name__)

ENVIRONMENTS: tuple[str, ...] = ("staging", "prod")
# Chart buckets: the last BUCKETS minutes of the gateway's request log.
BUCKETS = 15
BUCKET_SECONDS = 60


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
class SeriesPoint:
    """One minute of one API's traffic."""

    start: dt.datetime
    calls: int
    p95_ms: float | None


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


def package_metrics(home: Path, name: str, version: str) -> dict[str, Any]:
    """Headline metrics of a model package (metrics.json), empty when it is not on disk."""
    path = Path(home) / "models" / name / str(version) / "metrics.json"
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


def environment_cards(home: Path) -> list[EnvironmentCard]:
    """Staging and prod: deployment, model metrics, API revision and traffic."""
    from app.services import apis, deployments, protected

    status = deployments.read_status(home)
    traffic, series = traffic_figures(home)
    guarded = protected.protected_environments()
    cards = []
    for env in ENVIRONMENTS:
        deployment = None
        model: dict[str, Any] = {}
        row = deployments.active_row(env)
        if row is not None:
            deployment = deployments.to_dict(row, status)
            model = package_metrics(home, row.model_name, row.model_version)
        api = None
        api_name = apis.api_name(env)
        current = apis.current(api_name)
        if current is not None:
            api = {"name": current.api_name, "revision": current.revision,
                   "path": current.path, "published_by": current.created_by,
                   "published_at": current.created_at, "job_id": current.job_id}
        cards.append(EnvironmentCard(
            name=env, deployment=deployment, model_metrics=model, api=api,
            traffic=traffic.get(api_name), series=series.get(api_name, ()),
            protected=env in guarded))
    return cards


# --------------------------------------------------------------------------- traffic


@dataclass
class _LogTail:
    """The request log's recent calls, parsed once: each page view reads only new lines."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    identity: tuple[int, int] | None = None  # (device, inode) of the file read so far
    offset: int = 0
    aligned: bool = True  # whether offset is at the start of a line
    calls: deque[tuple[dt.datetime, str, int, float]] = field(default_factory=deque)


def _tail(home: Path) -> _LogTail:
    from flask import current_app

    tails = current_app.extensions.setdefault("modelgate.overview.tails", {})
    return tails.setdefault(str(home), _LogTail())  # type: ignore[no-any-return]


def _recent_calls(home: Path, metrics: ModuleType, since: dt.datetime
                  ) -> list[tuple[dt.datetime, str, int, float]]:
    """Calls logged since `since`: new bytes are parsed, the rest comes from memory.

    The dashboard is viewed often and the log grows with every call; re-parsing megabytes
    per view would cost more than the rest of the page (bench/page_bench.py).
    """
    path = metrics.request_log_path(home)
    tail = _tail(home)
    with tail.lock:
        try:
            stat = path.stat()
        except OSError:
            tail.identity, tail.offset = None, 0
            tail.calls.clear()
            return []
        identity = (stat.st_dev, stat.st_ino)
        if identity != tail.identity or stat.st_size < tail.offset:  # rotated or truncated
            tail.identity, tail.offset, tail.aligned = identity, 0, True
            tail.calls.clear()
        if stat.st_size > tail.offset:
            start = max(tail.offset, stat.st_size - metrics.TAIL_BYTES)
            aligned = tail.aligned and start == tail.offset
            with open(path, "rb") as fh:
                fh.seek(start)
                data = fh.read(stat.st_size - start)
            complete = data.rfind(b"\n") + 1  # a line being appended waits for the next view
            lines = data[:complete].split(b"\n")
            if not aligned:
                lines = lines[1:]  # began mid-line
            if complete:
                tail.offset, tail.aligned = start + complete, True
            for line in lines:
                parsed = _parse_call(line)
                if parsed is not None:
                    tail.calls.append(parsed)
        while tail.calls and tail.calls[0][0] < since:
            tail.calls.popleft()
        return [c for c in tail.calls if c[0] >= since]


def _parse_call(line: bytes) -> tuple[dt.datetime, str, int, float] | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
        return (dt.datetime.fromisoformat(str(record["time"])), str(record["api"]),
                int(record["status"]), float(record["latency_ms"]))
    except (KeyError, TypeError, ValueError):
        return None


def traffic_figures(home: Path, *, now: dt.datetime | None = None, buckets: int = BUCKETS
                    ) -> tuple[dict[str, Any], dict[str, tuple[SeriesPoint, ...]]]:
    """Per API: api_metrics.ApiTraffic over its window, and calls and p95 per minute."""
    from app.services import api_metrics as metrics

    now = now or dt.datetime.now(dt.UTC)
    window_start = now - dt.timedelta(seconds=metrics.WINDOW_SECONDS)
    end = now.replace(second=0, microsecond=0) + dt.timedelta(seconds=BUCKET_SECONDS)
    start = end - dt.timedelta(seconds=BUCKET_SECONDS * buckets)
    by_api: dict[str, list[tuple[dt.datetime, str, int, float]]] = {}
    for call in _recent_calls(home, metrics, min(window_start, start)):
        by_api.setdefault(call[1], []).append(call)
    traffic: dict[str, Any] = {}
    series: dict[str, tuple[SeriesPoint, ...]] = {}
    for api, calls in by_api.items():
        windowed = [c for c in calls if c[0] >= window_start]
        if windowed:
            # The same figures as api_metrics.traffic (the APIs page), from the parsed tail.
            latencies = sorted(c[3] for c in windowed)
            errors = sum(1 for c in windowed if c[2] >= 500)
            minutes = max(1.0, (now - min(c[0] for c in windowed)).total_seconds() / 60)
            traffic[api] = metrics.ApiTraffic(
                api=api, calls=len(windowed),
                calls_per_minute=round(len(windowed) / minutes, 2), errors=errors,
                rejected=sum(1 for c in windowed if 400 <= c[2] < 500),
                error_rate=round(errors / len(windowed), 4),
                p50_ms=metrics.percentile(latencies, 50), p95_ms=metrics.percentile(latencies, 95),
                p99_ms=metrics.percentile(latencies, 99),
                last_call=max(c[0] for c in windowed).isoformat())
        minute: list[list[float]] = [[] for _ in range(buckets)]
        for when, _, _, latency in calls:
            if start <= when < end:
                minute[int((when - start).total_seconds() // BUCKET_SECONDS)].append(latency)
        series[api] = tuple(
            SeriesPoint(start + dt.timedelta(seconds=BUCKET_SECONDS * i), len(values),
                        metrics.percentile(sorted(values), 95))
            for i, values in enumerate(minute))
    return traffic, series


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
