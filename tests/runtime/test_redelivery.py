"""A deploy whose worker dies mid-way is redelivered and resumes its own slot (no second slot)."""

from __future__ import annotations

import os
import signal

from tests.runtime.conftest import Stack
from tests.support import wait_for


def test_worker_killed_mid_deploy_resumes_the_same_slot(deployed: Stack) -> None:
    stack = deployed
    assert stack.worker is not None
    client = stack.client()
    job_id = stack.submit("deploy", {"version": stack.versions[2]})

    def slot_created() -> bool:
        job = client.get(f"/api/v1/jobs/{job_id}?log=1").get_json()
        return any(line["message"].startswith("new ") for line in job["log"])

    wait_for(slot_created, 60, "the deploy to record its slot", interval=0.05)
    children = stack.worker.pool_children()
    assert len(children) == 1
    os.kill(children[0], signal.SIGKILL)  # the pool child dies while it waits for readiness

    job = stack.finish(job_id)
    assert job["status"] == "SUCCEEDED", job
    assert job["attempts"] == 2
    messages = [line["message"] for line in job["log"]]
    assert any(m.startswith("resuming slot") for m in messages), messages
    with stack.app.app_context():
        from sqlalchemy import select

        from app.db import Deployment
        from app.extensions import db
        from app.services import deployments

        own = db.session.scalars(select(Deployment).where(Deployment.job_id == job_id)).all()
        assert len(own) == 1 and own[0].state == "ACTIVE"
        assert [r.id for r in deployments.running_in("staging")] == [own[0].id]
    assert stack.score().status_code == 200
