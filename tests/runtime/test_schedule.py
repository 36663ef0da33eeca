"""Scheduled rotation: beat's task queues rotate-keys for environments whose keys are too old."""

from __future__ import annotations

import datetime as dt

from tests.runtime.conftest import Stack


def test_old_keys_are_rotated_by_the_scheduled_task(deployed: Stack) -> None:
    from sqlalchemy import update

    from app.config import celery_settings
    from app.db import Deployment, utcnow
    from app.extensions import db
    from app.services import deployments
    from workers.tasks.deployments import rotate_due

    stack = deployed
    schedule = celery_settings(stack.app.config)["beat_schedule"]["rotate-due-keys"]
    assert schedule["task"] == "modelgate.deployments.rotate_due"
    _, old_primary, _ = stack.keys()
    with stack.app.app_context():
        row = deployments.active_row("staging")
        assert row is not None
        assert rotate_due.run() == []  # fresh keys: nothing to do
        db.session.execute(update(Deployment).where(Deployment.id == row.id).values(
            keys_rotated_at=utcnow() - dt.timedelta(days=31)))  # default rotation_days: 30
        db.session.commit()
        queued = rotate_due.run()
        assert len(queued) == 1
        assert rotate_due.run() == []  # one pending rotation per environment is enough
    job = stack.finish(queued[0])
    assert job["status"] == "SUCCEEDED", job
    assert job["requested_by"] == "modelgate-scheduler" and job["params"] == {
        "environment": "staging"}
    _, new_primary, _ = stack.keys()
    assert new_primary != old_primary
    with stack.app.app_context():
        row = deployments.active_row("staging")
        assert row is not None
        assert (utcnow() - row.keys_rotated_at).total_seconds() < 120
