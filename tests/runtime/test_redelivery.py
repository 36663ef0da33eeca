"""A deploy whose worker dies mid-way is redelivered and resumes its own slot (no second slot)."""

from __future__ import annotations

import os
import signal

from tests.runtime.conftest import Stack
from tests.support import WorkerProcess, wait_for

FAULT = "rollout.after-switch"


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


def _gateway_url_of(stack: Stack, environment: str) -> str:
    from app.backends.local import gateway as gateway_config

    named = gateway_config.read(stack.home)["named_values"]
    return str(named[gateway_config.backend_url_name(environment)]["value"])


def test_worker_lost_between_switch_and_activation(deployed: Stack) -> None:
    """The gateway is left on a slot that is not active: rotation re-asserts URL and key from
    the active slot (scores from it), and the resumed deploy then switches for good."""
    from app.services import deployments, jobs

    stack = deployed
    assert stack.worker is not None
    with stack.app.app_context():
        active = deployments.active_row("staging")
        assert active is not None
        old_version, old_url = active.model_version, deployments.base_url(active)
    new_version = next(v for v in stack.versions[1:] if v != old_version)

    # A worker armed to stop at the fault point takes the deploy; it is killed there.
    stack.worker.stop()
    faulty = WorkerProcess(stack.home, {**stack.env, "MODELGATE_FAULT_AT": FAULT},
                           concurrency=1)
    try:
        faulty.start()
        job_id = stack.submit("deploy", {"version": new_version})
        marker = stack.home / "run" / f"fault.{FAULT}.{job_id}"
        wait_for(marker.exists, 120, "the deploy to reach the point after the switch")
        faulty.kill_all()
    finally:
        faulty.kill_all()
        stack.worker.start()
    assert _gateway_url_of(stack, "staging") != old_url  # switched, but never activated
    with stack.app.app_context():
        active = deployments.active_row("staging")
        assert active is not None and active.model_version == old_version

    rotation = stack.run("rotate-keys")
    assert rotation["status"] == "SUCCEEDED", rotation
    assert _gateway_url_of(stack, "staging") == old_url
    response = stack.score()
    assert response.status_code == 200, response.text
    assert response.json()["model"]["version"] == old_version

    with stack.app.app_context():
        assert job_id in jobs.reconcile().requeued  # its worker is gone: redelivered
    job = stack.finish(job_id)
    assert job["status"] == "SUCCEEDED", job
    assert any(line["message"].startswith("resuming slot") for line in job["log"])
    response = stack.score()
    assert response.status_code == 200, response.text
    assert response.json()["model"]["version"] == new_version
