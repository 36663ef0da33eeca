"""The pipeline job: provision → train → deploy → publish as child jobs, run in order.

The parent only orchestrates: it queues one child at a time (jobs.submit with parent_id) and
follows it in the database, so each stage keeps its own log, retries and time limit. A failed
child fails the parent with the child's error; cancelling the parent cancels the running child.
A redelivered parent resumes: finished children are not run again. The parent holds a worker
slot while a child runs, so the worker needs a concurrency of at least 2.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from app.errors import AppError, Conflict
from app.extensions import db
from app.services import jobs
from app.services.params import PIPELINE_STAGES as STAGES
from app.services.params import stage as check_stage
from app.services.rollout import Reporter

POLL_SECONDS = 0.5
CANCEL_WAIT_SECONDS = 60.0


def stages_until(until: Any) -> tuple[str, ...]:
    """The stages to run, in order, up to and including `until`."""
    check_stage("params.until", until)
    return STAGES[: STAGES.index(until) + 1]


def run_pipeline(ctx: Reporter, params: Mapping[str, Any]) -> dict[str, Any]:
    """Queue each stage as a child job and follow it until it ends; ``params`` were checked
    at submit (KindSpec)."""
    stages = stages_until(params.get("until", "publish"))
    environment = str(params.get("environment", "staging"))
    requested_by = jobs.get(ctx.job_id).requested_by
    done: list[dict[str, Any]] = []
    for index, stage in enumerate(stages):
        ctx.check_cancelled()
        child = _child(ctx.job_id, stage)
        if child is None:
            params = {"environment": environment} if stage in ("deploy", "publish") else {}
            child = jobs.submit(jobs.parse_kind(stage), params, requested_by,
                                parent_id=ctx.job_id)
            ctx.log(f"{stage}: queued job {child.id}")
        else:
            ctx.log(f"{stage}: following existing job {child.id} ({child.status})")
        child_id = child.id
        final = _follow(ctx, child_id, stage, index, len(stages))
        if final.status == "CANCELLED":
            # Someone cancelled the stage itself: the pipeline stops the same way.
            ctx.log(f"{stage}: job {child_id} was cancelled; stopping the pipeline",
                    level="WARNING")
            raise jobs.JobCancelled(ctx.job_id)
        if final.status != "SUCCEEDED":
            raise AppError(f"{stage} job {child_id} {final.status.lower()}: "
                           f"{final.error or 'no reason given'}")
        done.append({"stage": stage, "job_id": child_id, "status": final.status})
        ctx.log(f"{stage}: job {child_id} succeeded")
    return {"environment": environment, "until": stages[-1], "stages": done}


def _child(parent_id: str, stage: str) -> Any:
    """The newest child job of this stage, if an earlier attempt already queued one."""
    for job in jobs.list_jobs(parent_id=parent_id, kind=stage, limit=5):
        return job
    return None


def _follow(ctx: Reporter, child_id: str, stage: str, index: int, total: int) -> Any:
    """Wait for a child to end, mirroring its progress on the parent; cancel it if asked."""
    last: tuple[int, str] | None = None
    while True:
        db.session.expire_all()
        child = jobs.get(child_id)
        if child.job_status.is_final:
            return child
        overall = int(100 * (index + child.progress / 100) / total)
        seen = (overall, child.step)
        try:
            if seen != last:
                ctx.progress(overall, f"{stage} ({index + 1}/{total}): {child.step}")
                last = seen
            else:
                ctx.check_cancelled()
        except jobs.JobCancelled:
            _cancel_child(ctx, child_id)
            raise
        time.sleep(POLL_SECONDS)


def _cancel_child(ctx: Reporter, child_id: str) -> None:
    """Cancel the running child and wait (bounded) until it has stopped."""
    try:
        jobs.cancel(child_id, f"pipeline:{ctx.job_id}")
    except Conflict:
        return  # it ended on its own meanwhile
    ctx.log(f"cancelling child job {child_id}")
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    while time.monotonic() < deadline:
        db.session.expire_all()
        if jobs.get(child_id).job_status.is_final:
            return
        time.sleep(POLL_SECONDS)
    ctx.log(f"child job {child_id} did not stop within {CANCEL_WAIT_SECONDS:.0f} s",
            level="WARNING")
