"""Where a job keeps the continuation tokens of its long-running cloud operations.

A backend's long operation (API Management takes 30-75 minutes to create) stores its
continuation token through the job's :class:`JobOperationStore` before the first wait, so a job
whose worker was killed, or that timed out and was retried, resumes polling the same operation
(GETs only) on its next attempt instead of starting it again.

Tokens live in ``jobs.operations`` (a JSON object, operation key -> token). Each write is
committed at once and reads go to the database, never to the session's cached row: a retry on
another worker sees what the killed one stored. This module writes only that column; the job's
state changes stay in app.services.jobs. Tokens are not shown anywhere (pages, REST API, logs).
"""

from __future__ import annotations

from sqlalchemy import select, update

from app.db import Job
from app.extensions import db


class JobOperationStore:
    """An OperationStore (app.backends.base) on one job's row."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id

    def __repr__(self) -> str:
        return f"JobOperationStore(job_id={self.job_id!r})"

    def _tokens(self) -> dict[str, str]:
        found = db.session.scalar(select(Job.operations).where(Job.id == self.job_id))
        return dict(found) if isinstance(found, dict) else {}

    def get(self, key: str) -> str | None:
        """The token stored under ``key``, read from the database."""
        token = self._tokens().get(key)
        return token if isinstance(token, str) and token else None

    def put(self, key: str, token: str | None) -> None:
        """Store (or, with None, forget) one operation's token and commit at once."""
        tokens = self._tokens()
        if token is None:
            if key not in tokens:
                return
            tokens.pop(key)
        elif tokens.get(key) == token:
            return
        else:
            tokens[key] = token
        # Only one attempt of a job runs at a time (jobs.claim), so read-modify-write is safe.
        db.session.execute(update(Job).where(Job.id == self.job_id)
                           .values(operations=tokens or None))
        db.session.commit()

    def keys(self) -> tuple[str, ...]:
        """The operations under way (for the job's log; never the tokens)."""
        return tuple(sorted(self._tokens()))
