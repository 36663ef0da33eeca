"""Scheduled key rotation: queue rotate-keys for environments whose keys are due."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from app.db import Job, JobStatus
from app.extensions import db
from app.services import deployments, jobs
from app.services.kinds import JobKind
from app.services.models import pipeline

SCHEDULER = "modelgate-scheduler"


def queue_due() -> list[str]:
    """Queue a rotation per environment older than keys.rotation_days (none already pending)."""
    days = pipeline().keys.rotation_days
    queued = []
    for env in deployments.rotation_due(dt.timedelta(days=days)):
        pending = db.session.scalars(select(Job).where(
            Job.kind == JobKind.ROTATE_KEYS.value,
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))).all()
        if any((j.params or {}).get("environment", "staging") == env for j in pending):
            continue
        job = jobs.submit(JobKind.ROTATE_KEYS, {"environment": env}, SCHEDULER)
        queued.append(job.id)
    return queued
