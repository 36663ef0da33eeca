"""Jobs: submit, read, cancel, and every job state change (the only module that writes them).

State machine (final states in capitals on the right):
    QUEUED ──claim──► RUNNING ──succeed──► SUCCEEDED
       │                 │ ├──fail──────► FAILED
       │                 │ ├──cancelled─► CANCELLED
       │                 │ └──retry / orphaned──► QUEUED (attempts left) or FAILED (cap reached)
       └──cancel──► CANCELLED
Every transition is a conditional UPDATE on the row's current status (and owning worker), so a
redelivered or duplicated message can never run a job twice at the same time or resurrect it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from flask import current_app
from sqlalchemy import func, select, update

from app.db import Job, JobLog, JobStatus, utcnow
from app.errors import Conflict, Forbidden, NotFound, ServiceUnavailable, ValidationError
from app.extensions import db
from app.services import audit, events, protected
from app.services.audit import AuditAction
from app.services.kinds import KIND_SPECS, JobKind, time_limit_options

logger = logging.getLogger(__name__)

MAX_PARAMS_BYTES = 16 * 1024
MAX_LOG_LINE = 2000


class JobCancelled(Exception):
    """Raised inside a running job when someone asked to cancel it."""


@dataclasses.dataclass(frozen=True)
class ReconcileReport:
    """What one reconciler pass did."""

    requeued: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


def worker_identity() -> str:
    """Identify this process as host:pid, so a dead owner on this host is recognised at once."""
    return f"{socket.gethostname()}:{os.getpid()}"


# --------------------------------------------------------------------------- reading


def get(job_id: str) -> Job:
    """Return the job, or raise NotFound."""
    job = db.session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} does not exist")
    return job


def list_jobs(*, limit: int = 50, status: str | None = None, kind: str | None = None,
              parent_id: str | None = None) -> list[Job]:
    """Return the newest jobs first, optionally filtered."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id).limit(max(1, min(limit, 500)))
    if status:
        query = query.where(Job.status == status.upper())
    if kind:
        query = query.where(Job.kind == kind)
    if parent_id:
        query = query.where(Job.parent_id == parent_id)
    return list(db.session.scalars(query))


def logs(job_id: str, *, after: int = 0, limit: int = 1000) -> list[JobLog]:
    """Return a job's log lines with seq > after, in order."""
    query = (select(JobLog).where(JobLog.job_id == job_id, JobLog.seq > after)
             .order_by(JobLog.seq).limit(limit))
    return list(db.session.scalars(query))


def to_dict(job: Job) -> dict[str, Any]:
    """Serialise a job for the REST API and the event stream."""
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "progress": job.progress,
        "step": job.step,
        "params": job.params or {},
        "result": job.result,
        "error": job.error,
        "requested_by": job.requested_by,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "parent_id": job.parent_id,
        "cancel_requested": job.cancel_requested,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "updated_at": _iso(job.updated_at),
        "duration_seconds": job.duration_seconds,
    }


def log_to_dict(line: JobLog) -> dict[str, Any]:
    """Serialise a log line."""
    return {"seq": line.seq, "time": _iso(line.time), "level": line.level,
            "message": line.message}


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# --------------------------------------------------------------------------- submitting


def parse_kind(raw: Any) -> JobKind:
    """Turn user input into a JobKind, or raise ValidationError naming the allowed values."""
    try:
        return JobKind(str(raw))
    except ValueError:
        allowed = ", ".join(k.value for k in JobKind)
        raise ValidationError(f"unknown job kind {raw!r}; use one of: {allowed}",
                              errors=[{"field": "kind", "message": "unknown job kind"}]) from None


def submit(kind: JobKind, params: dict[str, Any] | None, requested_by: str, *,
           roles: frozenset[str] | None = None, parent_id: str | None = None) -> Job:
    """Record a QUEUED job and enqueue its id; if enqueueing fails, no row is left behind.

    Every route, the CLI and internal callers (pipeline stages, the scheduler) submit here, so
    the protected-environment rule (app.services.protected) applies to all of them.

    Args:
        kind: what to run.
        params: JSON object of parameters, checked against the kind's schema (KindSpec).
        requested_by: who asked (a user's name or a client id).
        roles: the caller's roles; None skips the role check (internal callers such as a
            pipeline); it never skips the protected-environment rule.
        parent_id: the pipeline job this job belongs to.

    Raises:
        Forbidden: the caller lacks the kind's role.
        ProtectedEnvironment: the job would change a protected environment (403).
        ValidationError: bad params (naming the field); no job row is written.
        ServiceUnavailable: the queue (Redis) cannot be reached.
    """
    from app.auth.roles import has_role

    spec = KIND_SPECS[kind]
    if roles is not None and not has_role(roles, spec.role):
        raise Forbidden(f"queuing a {kind.value} job needs the {spec.role.value} role")
    params = _check_params(params)
    protected.check_submit(kind, params)  # 403 first: a protected change is refused outright
    spec.check_params(params)
    job = _record(kind, params, requested_by, parent_id)
    _enqueue(job, kind, requested_by)
    return job


def submit_granted(kind: JobKind, params: dict[str, Any], requested_by: str,
                   link: Callable[[Job], None]) -> Job:
    """Queue the job of an approved promotion or a break-glass rollback (services only).

    `link` records the grant that lets the job change a protected environment (the promotion's
    job id, or the rollback's audit record) after the row exists and before the job is queued,
    so the worker's check (protected.authorize_run) never races the grant. No route calls this;
    routes submit through :func:`submit`, which refuses protected changes.

    Raises:
        ServiceUnavailable: the queue is down; the row is removed, the caller undoes its link.
    """
    params = _check_params(params)
    KIND_SPECS[kind].check_params(params)
    job = _record(kind, params, requested_by, None)
    try:
        link(job)
    except Exception:
        db.session.rollback()
        db.session.delete(db.session.merge(job))
        db.session.commit()
        raise
    _enqueue(job, kind, requested_by)
    return job


def _record(kind: JobKind, params: dict[str, Any], requested_by: str,
            parent_id: str | None) -> Job:
    job = Job(kind=kind.value, status=JobStatus.QUEUED, params=params, requested_by=requested_by,
              max_attempts=int(current_app.config["JOB_MAX_ATTEMPTS"]), parent_id=parent_id,
              step="queued")
    db.session.add(job)
    db.session.commit()
    return job


def _enqueue(job: Job, kind: JobKind, requested_by: str) -> None:
    """Send the job's id to its task; on failure delete the row and raise ServiceUnavailable."""
    spec = KIND_SPECS[kind]
    try:
        result = current_app.extensions["celery"].send_task(
            spec.task_name, args=[job.id], **time_limit_options(kind, current_app.config))
    except Exception as exc:  # kombu raises OperationalError and friends; all mean "not queued"
        logger.error("could not enqueue job %s (%s): %s", job.id, kind.value,
                     exc.__class__.__name__)
        db.session.delete(job)
        db.session.commit()
        raise ServiceUnavailable(
            "the job queue is unreachable right now, so the job was not queued; "
            "check that Redis and the workers are running, then try again"
        ) from exc
    db.session.execute(update(Job).where(Job.id == job.id).values(celery_task_id=result.id))
    db.session.commit()
    append_log(job.id, f"queued by {requested_by}")
    audit.record(requested_by, AuditAction.JOB_QUEUED, f"job:{job.id}",
                 {"kind": kind.value, "params": job.params, "parent_id": job.parent_id})
    _emit(job.id)


def _check_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """Require a small JSON object of parameters."""
    import json

    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ValidationError("params must be a JSON object",
                              errors=[{"field": "params", "message": "must be an object"}])
    if len(json.dumps(params)) > MAX_PARAMS_BYTES:
        raise ValidationError("params are too large",
                              errors=[{"field": "params", "message": "at most 16 KiB"}])
    return params


def cancel(job_id: str, actor: str, *, roles: frozenset[str] | None = None) -> Job:
    """Cancel a queued job at once, or ask a running one to stop at its next checkpoint.

    Raises:
        Forbidden: the caller lacks the role that may queue this kind.
        Conflict: the job has already ended.
    """
    from app.auth.roles import has_role

    job = get(job_id)
    spec = KIND_SPECS[JobKind(job.kind)]
    if roles is not None and not has_role(roles, spec.role):
        raise Forbidden(f"cancelling a {job.kind} job needs the {spec.role.value} role")
    if job.job_status.is_final:
        raise Conflict(f"job {job_id} is already {job.status}")
    if job.status == JobStatus.QUEUED:
        done = _transition(job_id, JobStatus.QUEUED, status=JobStatus.CANCELLED,
                           step="cancelled", finished_at=utcnow(), cancel_requested=True)
        if done:
            append_log(job_id, f"cancelled by {actor} before it started")
            audit.record(actor, AuditAction.JOB_CANCELLED, f"job:{job_id}", {"kind": job.kind})
            _revoke(job)
            _emit(job_id)
            return get(job_id)
    db.session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING)
                       .values(cancel_requested=True, updated_at=utcnow()))
    db.session.commit()
    append_log(job_id, f"cancellation requested by {actor}")
    audit.record(actor, AuditAction.JOB_CANCELLED, f"job:{job_id}",
                 {"kind": job.kind, "while": "running"})
    _emit(job_id)
    db.session.expire_all()
    return get(job_id)


def _revoke(job: Job) -> None:
    """Tell workers to drop the queued message; harmless if it is gone (claim checks the row)."""
    if not job.celery_task_id:
        return
    try:
        current_app.extensions["celery"].control.revoke(job.celery_task_id)
    except Exception as exc:  # best effort: the claim step refuses cancelled jobs anyway
        logger.info("revoke of %s failed: %s", job.id, exc.__class__.__name__)


# --------------------------------------------------------------------------- worker side


def claim(job_id: str, worker: str) -> Job | None:
    """Take a job for this worker, or return None when it must not run now.

    A job runs when it is QUEUED, or RUNNING under an owner that is gone (same host, dead pid)
    or silent (heartbeat older than JOB_STALE_AFTER_SECONDS). Each claim consumes an attempt;
    a job that has used all attempts is FAILED instead, so a poison job cannot loop.
    """
    job = db.session.get(Job, job_id)
    if job is None:
        logger.warning("job %s not found; dropping its message", job_id)
        return None
    db.session.refresh(job)
    status = job.job_status
    if status.is_final:
        return None
    if status == JobStatus.RUNNING and _owner_alive(job):
        logger.info("job %s is running on %s; ignoring a duplicate delivery", job_id, job.worker)
        return None
    if job.cancel_requested:
        _transition(job_id, status, status=JobStatus.CANCELLED, step="cancelled",
                    finished_at=utcnow())
        _emit(job_id)
        return None
    if job.attempts >= job.max_attempts:
        fail_final(job_id, status, f"gave up after {job.attempts} attempts: the worker running "
                                   "it was lost every time (crash, kill or time limit)")
        return None
    now = utcnow()
    # Read before the transition: it expires the session, after which job.attempts is the new count.
    attempt = job.attempts + 1
    claimed = _transition(
        job_id, status, attempts_seen=job.attempts, status=JobStatus.RUNNING,
        attempts=attempt, worker=worker, heartbeat_at=now,
        started_at=job.started_at or now, step="starting", error=None,
    )
    if not claimed:
        return None
    append_log(job_id, f"attempt {attempt} of {job.max_attempts} started on {worker}")
    _emit(job_id)
    return get(job_id)


def _owner_alive(job: Job) -> bool:
    """Whether the worker recorded on a RUNNING job is still alive and beating."""
    stale_after = float(current_app.config["JOB_STALE_AFTER_SECONDS"])
    if job.heartbeat_at is None or (utcnow() - job.heartbeat_at).total_seconds() > stale_after:
        return False
    host, _, pid = (job.worker or "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return _process_alive(int(pid))
    return True


def _process_alive(pid: int) -> bool:
    """Whether a local process exists and is not a zombie (a killed pool child may be one)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def report_progress(job_id: str, worker: str, percent: int, step: str) -> None:
    """Record progress of a running job owned by `worker`; raise JobCancelled if asked to stop."""
    percent = max(0, min(100, int(percent)))
    db.session.execute(
        update(Job).where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.RUNNING)
        .values(progress=percent, step=step[:200], heartbeat_at=utcnow(), updated_at=utcnow())
    )
    db.session.commit()
    append_log(job_id, f"[{percent:3d}%] {step}")
    _emit(job_id)
    if cancel_requested(job_id):
        raise JobCancelled(job_id)


def cancel_requested(job_id: str) -> bool:
    """Whether someone asked the job to stop."""
    return bool(db.session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def heartbeat(job_id: str, worker: str) -> bool:
    """Refresh the heartbeat using a fresh connection (called from a background thread).

    Returns whether cancellation was requested.
    """
    assert db.engine is not None
    with db.engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == job_id, Job.worker == worker,
                                       Job.status == JobStatus.RUNNING)
                     .values(heartbeat_at=utcnow()))
        return bool(conn.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def succeed(job_id: str, worker: str, result: dict[str, Any]) -> None:
    """Mark the worker's running job SUCCEEDED with its result."""
    if _transition(job_id, JobStatus.RUNNING, owner=worker, status=JobStatus.SUCCEEDED,
                   progress=100, step="done", result=result, finished_at=utcnow()):
        append_log(job_id, "succeeded")
        _audit_end(job_id, AuditAction.JOB_SUCCEEDED)
    _emit(job_id)


def fail(job_id: str, worker: str, error: str) -> None:
    """Mark the worker's running job FAILED with a readable reason."""
    if _transition(job_id, JobStatus.RUNNING, owner=worker, status=JobStatus.FAILED,
                   error=error[:4000], step="failed", finished_at=utcnow()):
        append_log(job_id, f"failed: {error}", level="ERROR")
        _audit_end(job_id, AuditAction.JOB_FAILED, error=error[:500])
    _emit(job_id)


def fail_final(job_id: str, from_status: JobStatus, error: str) -> None:
    """FAIL a job regardless of owner (attempt cap, reconciler)."""
    if _transition(job_id, from_status, status=JobStatus.FAILED, error=error[:4000],
                   step="failed", finished_at=utcnow()):
        append_log(job_id, f"failed: {error}", level="ERROR")
        _audit_end(job_id, AuditAction.JOB_FAILED, error=error[:500])
    _emit(job_id)


def mark_cancelled(job_id: str, worker: str) -> None:
    """Mark the worker's running job CANCELLED after it stopped at a checkpoint."""
    if _transition(job_id, JobStatus.RUNNING, owner=worker, status=JobStatus.CANCELLED,
                   step="cancelled", finished_at=utcnow()):
        append_log(job_id, "cancelled")
        _audit_end(job_id, AuditAction.JOB_CANCELLED)
    _emit(job_id)


def release_for_retry(job_id: str, worker: str, reason: str) -> bool:
    """Put a running job back to QUEUED after a transient error; False if attempts are used up."""
    job = get(job_id)
    if job.attempts >= job.max_attempts:
        fail(job_id, worker, f"{reason} (after {job.attempts} attempts)")
        return False
    if _transition(job_id, JobStatus.RUNNING, owner=worker, status=JobStatus.QUEUED,
                   worker=None, step="waiting to retry"):
        append_log(job_id, f"transient error, will retry: {reason}", level="WARNING")
    _emit(job_id)
    return True


def append_log(job_id: str, message: str, *, level: str = "INFO") -> None:
    """Append a line to the job's log and push it to listeners."""
    message = message[:MAX_LOG_LINE]
    for _ in range(3):  # a concurrent writer may take the same seq; retry with the next one
        seq = (db.session.scalar(select(func.max(JobLog.seq)).where(JobLog.job_id == job_id))
               or 0) + 1
        line = JobLog(job_id=job_id, seq=seq, time=utcnow(), level=level, message=message)
        db.session.add(line)
        try:
            db.session.commit()
            break
        except Exception:
            db.session.rollback()
    else:
        logger.warning("could not append a log line to job %s", job_id)
        return
    # The same shape as a reloaded page's lines (log_to_dict), time included.
    events.publish(current_app.extensions.get("redis"),
                   {"type": "log", "job_id": job_id, "line": log_to_dict(line)})


# --------------------------------------------------------------------------- reconciler


def reconcile() -> ReconcileReport:
    """Requeue or fail RUNNING jobs whose worker is gone, and fail jobs queued for too long."""
    requeued: list[str] = []
    failed: list[str] = []
    running = db.session.scalars(select(Job).where(Job.status == JobStatus.RUNNING)).all()
    for job in running:
        if _owner_alive(job):
            continue
        if job.attempts >= job.max_attempts:
            fail_final(job.id, JobStatus.RUNNING,
                       f"its worker ({job.worker}) stopped responding and all "
                       f"{job.max_attempts} attempts are used")
            failed.append(job.id)
        elif _transition(job.id, JobStatus.RUNNING, owner=job.worker, status=JobStatus.QUEUED,
                         worker=None, step="requeued after its worker was lost"):
            append_log(job.id, f"worker {job.worker} was lost; requeued", level="WARNING")
            _send(job)
            requeued.append(job.id)
    queued_timeout = float(current_app.config["JOB_QUEUED_TIMEOUT_SECONDS"])
    cutoff = utcnow() - dt.timedelta(seconds=queued_timeout)
    stale = db.session.scalars(select(Job).where(Job.status == JobStatus.QUEUED,
                                                 Job.updated_at < cutoff)).all()
    for job in stale:
        fail_final(job.id, JobStatus.QUEUED,
                   f"no worker picked it up within {queued_timeout:.0f} s")
        failed.append(job.id)
    return ReconcileReport(tuple(requeued), tuple(failed))


def _send(job: Job) -> None:
    """Re-enqueue an existing job (reconciler); a failure leaves it QUEUED for the next pass."""
    try:
        kind = JobKind(job.kind)
        current_app.extensions["celery"].send_task(
            KIND_SPECS[kind].task_name, args=[job.id],
            **time_limit_options(kind, current_app.config))
    except Exception as exc:
        logger.warning("could not requeue job %s: %s", job.id, exc.__class__.__name__)


# --------------------------------------------------------------------------- internals


def _transition(job_id: str, from_status: JobStatus, *, owner: str | None = None,
                attempts_seen: int | None = None, **values: Any) -> bool:
    """Apply `values` only if the job is still in `from_status` (and owned by `owner`)."""
    query = update(Job).where(Job.id == job_id, Job.status == from_status)
    if owner is not None:
        query = query.where(Job.worker == owner)
    if attempts_seen is not None:
        query = query.where(Job.attempts == attempts_seen)
    values.setdefault("updated_at", utcnow())
    result = db.session.execute(query.values(**values))
    db.session.commit()
    db.session.expire_all()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _audit_end(job_id: str, action: AuditAction, **details: Any) -> None:
    """Audit how a job ended; the actor is the system acting for whoever queued it."""
    job = db.session.get(Job, job_id)
    if job is not None:
        audit.record("modelgate", action, f"job:{job_id}",
                     {"kind": job.kind, "requested_by": job.requested_by,
                      "attempts": job.attempts, **details})


def _emit(job_id: str) -> None:
    """Push the job's current snapshot to listeners."""
    job = db.session.get(Job, job_id)
    if job is not None:
        events.publish(current_app.extensions.get("redis"), {"type": "job", "job": to_dict(job)})
