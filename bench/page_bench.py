"""Server-side render time of the panel's pages with 1,000 jobs and 50 model versions.

    python -m bench.page_bench [--jobs 1000] [--versions 50] [--requests 300] [--home DIR]

The database is seeded directly: pipelines of four child jobs (with ten log lines each) until
--jobs rows exist, an active deployment in staging and prod, their API revisions, and a
gateway request log of 20,000 calls within the last 15 minutes. The model versions are real
MLflow versions: one real training run (logistic regression on the real CSV), then that outcome
is logged and registered --versions times (each a real run with its model and package). With
--home pointing at a folder from an earlier run, the seeding is skipped.

Each page is requested in-process through Flask's test client (the whole WSGI request: routing,
session, queries, template), so the time is the panel's own, without network or server. The
session is a real server-side one: an embedded redis-server on a free port holds its record,
read once per request as in production.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CSV = ROOT / "data" / "german_credit_data.csv"
STAGES = ("provision", "train", "deploy", "publish")
MODEL = "german-credit"


def seed_versions(home: Path, count: int) -> None:
    """Register `count` real MLflow versions: one real training, registered `count` times."""
    from app.ml.registry import ModelRegistry
    from app.ml.workflow import train_and_register

    config = {"candidates": [{"family": "logistic_regression", "params": {"max_iter": 1000}}],
              "importance_repeats": 1, "cv_folds": 3}
    first = train_and_register(home, CSV, job_id="bench-0", config=config)
    registry = ModelRegistry.for_home(home)
    for i in range(1, count):
        registry.log_and_register(first.outcome, job_id=f"bench-{i}")
    registry.download_package(MODEL, str(count), home / "models" / MODEL / str(count))


def seed_jobs(total: int) -> str:
    """Insert pipelines (parent + four children, ten log lines each); return a pipeline's id."""
    from app.db import Job, JobLog, new_id, utcnow
    from app.extensions import db

    rng = random.Random(7)
    now = utcnow()
    jobs: list[dict[str, Any]] = []
    logs: list[dict[str, Any]] = []
    sample = ""
    while len(jobs) < total:
        start = now - dt.timedelta(minutes=len(jobs))
        parent = new_id()
        sample = sample or parent
        failed = rng.random() < 0.1
        jobs.append(_job(parent, "pipeline", "FAILED" if failed else "SUCCEEDED", start,
                         {"environment": "staging", "until": "publish", "stages": []}))
        for index, kind in enumerate(STAGES):
            if len(jobs) >= total:
                break
            child = new_id()
            status = "FAILED" if failed and index == 3 else "SUCCEEDED"
            jobs.append(_job(child, kind, status, start + dt.timedelta(seconds=index),
                             _result(kind, len(jobs)), parent))
        for job in jobs[-5:]:
            logs.extend({"job_id": job["id"], "seq": seq, "level": "INFO", "time": start,
                         "message": f"[{seq * 10:3d}%] step {seq} of {job['kind']}"}
                        for seq in range(1, 11))
    db.session.execute(Job.__table__.insert(), jobs[:total])
    db.session.execute(JobLog.__table__.insert(),
                       [line for line in logs if line["job_id"] in {j["id"] for j in jobs[:total]}])
    db.session.commit()
    return sample


def _job(job_id: str, kind: str, status: str, when: dt.datetime, result: dict[str, Any],
         parent: str | None = None) -> dict[str, Any]:
    return {"id": job_id, "kind": kind, "status": status, "progress": 100, "step": "done",
            "params": {"environment": "staging"} if kind in ("deploy", "publish") else {},
            "result": result if status == "SUCCEEDED" else None,
            "error": "publish job failed: bench" if status == "FAILED" else None,
            "requested_by": "alice", "attempts": 1, "max_attempts": 3, "worker": None,
            "celery_task_id": None, "cancel_requested": False, "parent_id": parent,
            "created_at": when, "started_at": when, "finished_at": when + dt.timedelta(seconds=3),
            "heartbeat_at": None, "updated_at": when}


def _result(kind: str, n: int) -> dict[str, Any]:
    model = {"name": MODEL, "version": str(1 + n % 50)}
    return {"provision": {"workspace": "modelgate-local", "backend": "local"},
            "train": {"model": model},
            "deploy": {"environment": "staging", "slot": "blue", "model": model},
            "publish": {"api": "credit-risk-staging", "revision": n, "environment": "staging"},
            }[kind]


def seed_serving(home: Path, versions: int) -> None:
    """Active deployments and API revisions for staging and prod, and 20,000 logged calls."""
    from app.db import ApiRevision
    from app.extensions import db
    from app.services import apis, deployments

    for env in ("staging", "prod"):
        row = deployments.create_slot(environment=env, model_name=MODEL,
                                      model_version=str(versions), replicas=1, resources={},
                                      job_id=f"bench-deploy-{env}")
        deployments.activate(row.id)
        db.session.add(ApiRevision(api_name=apis.api_name(env), path=apis.api_path(env),
                                   environment=env, revision=1, policy_xml="<policies/>",
                                   created_by="alice", is_current=True))
    db.session.commit()
    rng = random.Random(3)
    now = dt.datetime.now(dt.UTC)
    path = home / "logs" / "gateway-requests.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for i in range(20_000):
            when = now - dt.timedelta(seconds=900 * (20_000 - i) / 20_000)
            api = "credit-risk" if i % 2 else "credit-risk-staging"
            out.write(json.dumps({"time": when.isoformat(), "caller": "bench", "api": api,
                                  "revision": 1, "environment": "prod" if i % 2 else "staging",
                                  "status": 200 if rng.random() > 0.01 else 502,
                                  "latency_ms": round(rng.lognormvariate(1.5, 0.4), 3),
                                  "backend_ms": 1.0, "model_version": str(versions),
                                  "request_id": f"{i:032x}"}) + "\n")


def measure(client: Any, url: str, requests: int, warmup: int = 20) -> dict[str, float]:
    """p50/p99/mean of `requests` GETs of `url` after `warmup` unmeasured ones."""
    for _ in range(warmup):
        assert client.get(url).status_code == 200, url
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(url)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, url
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 2),
            "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 2),
            "mean_ms": round(statistics.fmean(samples), 2), "requests": requests}


def main(argv: list[str] | None = None) -> int:
    """Seed (unless --home holds an earlier run), then time each page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=50)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--home", type=Path, default=None,
                        help="reuse (or create) this MODELGATE_HOME instead of a temporary one")
    args = parser.parse_args(argv)
    home = (args.home or Path(tempfile.mkdtemp(prefix="modelgate-page-bench-"))).resolve()
    home.mkdir(parents=True, exist_ok=True)
    for name in list(os.environ):
        if name.startswith("MODELGATE_"):
            del os.environ[name]

    from app.localstack.redis_server import make_spec, wait_until_ours

    spec = make_spec(home)
    redis_process = subprocess.Popen(spec.command(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
    try:
        wait_until_ours(spec, redis_process)
        return run(args, home, spec.url)
    finally:
        redis_process.terminate()
        redis_process.wait(10)


def run(args: argparse.Namespace, home: Path, redis_url: str) -> int:
    """Seed if needed, sign alice in, time each page, write the report."""
    from app import create_app
    from app.migrate import upgrade

    database = f"sqlite:///{home / 'modelgate.db'}"
    marker = home / "bench-seeded.json"
    app = create_app({"HOME": str(home), "DATABASE_URL": database, "SECRET_KEY": "b" * 48,
                      "REDIS_URL": redis_url, "SESSION_COOKIE_SECURE": False,
                      "SESSION_COOKIE_NAME": "session"})
    upgrade(database)
    with app.app_context():
        if not marker.exists():
            started = time.perf_counter()
            seed_versions(home, args.versions)
            sample = seed_jobs(args.jobs)
            seed_serving(home, args.versions)
            marker.write_text(json.dumps({"pipeline": sample}))
            print(f"seeded in {time.perf_counter() - started:.0f} s: {home}", file=sys.stderr)
        sample = json.loads(marker.read_text())["pipeline"]
        from sqlalchemy import func, select

        from app.db import Job
        from app.extensions import db
        from app.services import models

        job_count = db.session.scalar(select(func.count()).select_from(Job))
        version_count = len(models.list_versions(MODEL))
        train_job = db.session.scalar(select(Job.id).where(Job.kind == "train").limit(1))

    # What each panel worker does under gunicorn before serving (app/wsgi.py).
    from app.wsgi import warm_up

    warm_up(app)
    from app.auth.sessions import SID_KEY, session_store
    from app.auth.users import User

    client = app.test_client()
    alice = User(id="oid-alice", name="Alice", username="alice",
                 roles=frozenset({"MLOps.Engineer", "Score.Invoke"}))
    # No identity provider here: mark the roles checked ahead, so the run measures the steady
    # state (one GET per request), not a re-check that could not renew any token.
    session_id = session_store(app).create(alice, roles_checked_at=time.time() + 86400)
    with client.session_transaction() as session:
        session[SID_KEY] = session_id
        session["_user_id"] = alice.id
        session["_fresh"] = True
    pages = {"dashboard": "/", "jobs list": "/jobs/",
             "job detail (pipeline, 4 stages)": f"/jobs/{sample}",
             "job detail (train)": f"/jobs/{train_job}",
             f"model versions ({version_count})": f"/models/{MODEL}"}
    results = {name: measure(client, url, args.requests) for name, url in pages.items()}
    report = {"jobs": job_count, "model_versions": version_count, "requests": args.requests,
              "python": platform.python_version(), "cpus": os.cpu_count(),
              "load_average": os.getloadavg(), "pages": results}
    out = ROOT / "bench" / "results" / "page-bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"{job_count} jobs, {version_count} model versions, {args.requests} requests per page"
          f", load average {report['load_average'][0]:.2f}")
    print(f"{'page':<36}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    for name, figures in results.items():
        print(f"{name:<36}{figures['p50_ms']:>9}{figures['p99_ms']:>9}{figures['mean_ms']:>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
