"""Job-queue housekeeping tasks: the self-check demo job and the reconciler."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import shared_task

from workers.tasks._runner import JobContext, run_job


@shared_task(bind=True, name="modelgate.jobs.selfcheck", soft_time_limit=600, time_limit=660)
def selfcheck(self: Any, job_id: str) -> None:
    """Run the self-check job: exercises progress, logs, cancellation and idempotent output."""
    run_job(self, job_id, _selfcheck)


def _selfcheck(ctx: JobContext) -> dict[str, Any]:
    """Walk through steps, then write one artifact keyed by job id (atomic, so never twice)."""
    steps = int(ctx.params.get("steps", 5))
    delay = float(ctx.params.get("step_seconds", 0.2))
    if not 1 <= steps <= 100 or not 0 <= delay <= 30:
        raise ValueError("selfcheck params: steps must be 1..100 and step_seconds 0..30")
    if ctx.params.get("crash") == "always":
        # Simulates a poison job that takes its worker process down on every attempt.
        os._exit(13)
    for i in range(steps):
        ctx.progress(int(100 * i / steps), f"step {i + 1} of {steps}")
        time.sleep(delay)
    if ctx.params.get("fail"):
        raise ValueError(str(ctx.params["fail"]))
    out_dir = ctx.home / "artifacts" / "selfcheck"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{ctx.job_id}.json"
    tmp = out_dir / f".{ctx.job_id}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"job_id": ctx.job_id, "attempt": ctx.attempt, "steps": steps}))
    os.replace(tmp, target)
    return {"artifact": str(target), "steps": steps, "attempt": ctx.attempt}


@shared_task(name="modelgate.jobs.reconcile", soft_time_limit=120, time_limit=150)
def reconcile() -> dict[str, list[str]]:
    """Requeue or fail orphaned jobs (runs every RECONCILE_EVERY_SECONDS from beat)."""
    from app.services import jobs

    report = jobs.reconcile()
    return {"requeued": list(report.requeued), "failed": list(report.failed)}
