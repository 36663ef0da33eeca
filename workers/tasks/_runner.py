"""run_job: the one place a worker moves a job through its states."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from flask import current_app

from app.backends.base import TransientBackendError
from app.services import jobs

logger = logging.getLogger(__name__)


@dataclass
class JobContext:
    """What an operation gets: its parameters and ways to report progress and logs."""

    job_id: str
    worker: str
    params: dict[str, Any]
    attempt: int
    home: Path
    _cancel: threading.Event = field(default_factory=threading.Event)

    def progress(self, percent: int, step: str) -> None:
        """Report progress; raises JobCancelled when someone asked to stop."""
        jobs.report_progress(self.job_id, self.worker, percent, step)

    def log(self, message: str, *, level: str = "INFO") -> None:
        """Append a line to the job's log."""
        jobs.append_log(self.job_id, message, level=level)

    def check_cancelled(self) -> None:
        """Raise JobCancelled if cancellation was requested."""
        if self._cancel.is_set() or jobs.cancel_requested(self.job_id):
            raise jobs.JobCancelled(self.job_id)


Operation = Callable[[JobContext], dict[str, Any]]


def run_job(task: Any, job_id: str, operation: Operation) -> None:
    """Claim the job, run the operation with a heartbeat, and record how it ended.

    Errors are never swallowed: each ends the job FAILED with its message (or QUEUED again for
    a transient error while attempts remain), and unexpected ones are logged with a traceback.
    """
    worker = jobs.worker_identity()
    job = jobs.claim(job_id, worker)
    if job is None:
        return
    config = current_app.config
    ctx = JobContext(job_id=job_id, worker=worker, params=dict(job.params or {}),
                     attempt=job.attempts, home=Path(config["HOME"]))
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, name=f"heartbeat-{job_id}", daemon=True,
                            args=(current_app._get_current_object(), job_id, worker, ctx, stop,
                                  float(config["JOB_HEARTBEAT_SECONDS"])))
    beat.start()
    try:
        result = operation(ctx)
    except jobs.JobCancelled:
        jobs.mark_cancelled(job_id, worker)
    except SoftTimeLimitExceeded:
        jobs.fail(job_id, worker, f"timed out after {_soft_limit(task, config)} s")
    except TransientBackendError as exc:  # worth retrying: the job is queued again
        if jobs.release_for_retry(job_id, worker, str(exc)):
            raise task.retry(countdown=min(60, 2 ** ctx.attempt), max_retries=None) from exc
    except Exception as exc:
        from app.errors import AppError

        if isinstance(exc, AppError):
            message = exc.message
        else:
            logger.exception("job %s failed unexpectedly", job_id)
            message = f"{exc.__class__.__name__}: {exc}"[:1000]
        jobs.fail(job_id, worker, message)
    else:
        jobs.succeed(job_id, worker, result)
    finally:
        stop.set()


def _soft_limit(task: Any, config: Any) -> int:
    """The soft time limit this run had: the one sent with the task (a kind's longer limit on
    a backend, app.services.kinds), the task's own, or the configured default."""
    sent = getattr(getattr(task, "request", None), "timelimit", None) or (None, None)
    soft = sent[1] if isinstance(sent, list | tuple) and len(sent) > 1 else None
    return int(soft or getattr(task, "soft_time_limit", None) or config["JOB_TIME_LIMIT_SECONDS"])


def _heartbeat(app: Any, job_id: str, worker: str, ctx: JobContext, stop: threading.Event,
               interval: float) -> None:
    """Keep the job's heartbeat fresh while it runs, and notice cancellation requests."""
    with app.app_context():
        while not stop.wait(interval):
            try:
                if jobs.heartbeat(job_id, worker):
                    ctx._cancel.set()
            except Exception as exc:  # the next beat retries; the reconciler tolerates gaps
                logger.warning("heartbeat for job %s failed: %s", job_id, exc.__class__.__name__)
