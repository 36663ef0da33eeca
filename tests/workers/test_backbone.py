"""The job backbone end to end: real Redis, real Celery worker processes, the panel's HTTP API."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import msal
import pytest

from tests.conftest import build_app, csrf_headers, sign_in
from tests.identity_support import start_issuer
from tests.support import WorkerProcess, child_env, wait_for

FAST = {"JOB_HEARTBEAT_SECONDS": 0.5, "JOB_STALE_AFTER_SECONDS": 4,
        "BROKER_VISIBILITY_TIMEOUT": 10, "BROKER_RESTORE_INTERVAL": 1,
        "RECONCILE_EVERY_SECONDS": 1}


@pytest.fixture
def stack(tmp_path: Path, redis_server: Any, database_url: str) -> Any:
    """The panel app, a signed-in engineer's client, and a way to start workers."""
    app = build_app(tmp_path, database_url, redis_server.url, **FAST)
    client = app.test_client()
    sign_in(client, "alice")
    workers: list[WorkerProcess] = []

    class Stack:
        def __init__(self) -> None:
            self.app, self.client, self.redis, self.home = app, client, redis_server, tmp_path
            self.headers = csrf_headers(client)

        def worker(self, **kwargs: Any) -> WorkerProcess:
            env = child_env(tmp_path, database_url, redis_server.url, **FAST)
            w = WorkerProcess(tmp_path, env, **kwargs).start()
            workers.append(w)
            return w

        def submit(self, params: dict[str, Any] | None = None, kind: str = "selfcheck") -> str:
            r = client.post("/api/v1/jobs", json={"kind": kind, "params": params or {}},
                            headers=self.headers)
            assert r.status_code == 202, r.get_json()
            assert r.get_json()["status"] == "QUEUED"
            return str(r.get_json()["id"])

        def job(self, job_id: str) -> dict[str, Any]:
            r = client.get(f"/api/v1/jobs/{job_id}?log=1")
            assert r.status_code == 200
            return dict(r.get_json())

        def wait_status(self, job_id: str, *statuses: str, timeout: float = 60) -> dict[str, Any]:
            return dict(wait_for(lambda: (j := self.job(job_id))["status"] in statuses and j,
                                 timeout, f"job {job_id} to reach {statuses}",
                                 interval=0.2))

    yield Stack()
    for w in workers:
        w.stop()


def _messages(job: dict[str, Any]) -> list[str]:
    return [line["message"] for line in job["log"]]


def test_job_runs_to_success_with_progress_and_log(stack: Any) -> None:
    stack.worker()
    job_id = stack.submit({"steps": 4, "step_seconds": 0.05})
    job = stack.wait_status(job_id, "SUCCEEDED", "FAILED")
    assert job["status"] == "SUCCEEDED", job
    assert job["progress"] == 100
    assert job["attempts"] == 1
    assert job["requested_by"] == "alice"
    messages = _messages(job)
    # The log counts attempts as the header does.
    assert [m.split(" started")[0] for m in messages if m.startswith("attempt ")] == [
        "attempt 1 of 3"]
    assert any("step 4 of 4" in m for m in messages)
    assert messages[-1] == "succeeded"
    assert Path(job["result"]["artifact"]).exists()


def test_failing_job_ends_failed_with_its_reason(stack: Any) -> None:
    stack.worker()
    job_id = stack.submit({"steps": 1, "step_seconds": 0, "fail": "dataset is empty"})
    job = stack.wait_status(job_id, "SUCCEEDED", "FAILED")
    assert job["status"] == "FAILED"
    assert "dataset is empty" in job["error"]


def test_killed_pool_child_is_redelivered_and_result_written_once(stack: Any) -> None:
    worker = stack.worker()
    job_id = stack.submit({"steps": 12, "step_seconds": 0.3})
    wait_for(lambda: stack.job(job_id)["progress"] > 0, 30, "the job to make progress")
    # The job row names its worker as host:pid; that pid is the pool child to kill.
    with stack.app.app_context():
        from app.services import jobs

        owner = jobs.get(job_id).worker
    victim = int(owner.rsplit(":", 1)[1])
    assert victim in worker.pool_children()
    os.kill(victim, signal.SIGKILL)
    job = stack.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=60)
    assert job["status"] == "SUCCEEDED", job
    assert job["attempts"] == 2
    artifacts = list((stack.home / "artifacts" / "selfcheck").glob(f"{job_id}*"))
    assert [a.name for a in artifacts] == [f"{job_id}.json"]


def test_poison_job_fails_after_the_attempt_cap(stack: Any) -> None:
    stack.worker()
    job_id = stack.submit({"crash": "always"})
    job = stack.wait_status(job_id, "FAILED", "SUCCEEDED", timeout=90)
    assert job["status"] == "FAILED"
    assert job["attempts"] == job["max_attempts"] == 3
    starts = [m.split(" started")[0] for m in _messages(job) if m.startswith("attempt ")]
    assert starts == ["attempt 1 of 3", "attempt 2 of 3", "attempt 3 of 3"]
    assert "gave up after 3 attempts" in job["error"]


def test_whole_worker_killed_then_new_worker_finishes_the_job(stack: Any) -> None:
    first = stack.worker()
    job_id = stack.submit({"steps": 20, "step_seconds": 0.25})
    wait_for(lambda: stack.job(job_id)["progress"] > 0, 30, "the job to make progress")
    first.kill_all()
    stack.worker(beat=True)
    job = stack.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=60)
    assert job["status"] == "SUCCEEDED", job
    assert job["attempts"] == 2


def test_cancel_running_job(stack: Any) -> None:
    stack.worker()
    job_id = stack.submit({"steps": 50, "step_seconds": 0.2})
    wait_for(lambda: stack.job(job_id)["status"] == "RUNNING", 30, "the job to run")
    r = stack.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=stack.headers)
    assert r.status_code == 200
    job = stack.wait_status(job_id, "CANCELLED", "SUCCEEDED", "FAILED", timeout=30)
    assert job["status"] == "CANCELLED"
    assert job["progress"] < 100


def test_cancel_queued_job_never_runs(stack: Any) -> None:
    job_id = stack.submit({"steps": 1})
    r = stack.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=stack.headers)
    assert r.status_code == 200 and r.get_json()["status"] == "CANCELLED"
    stack.worker()
    second = stack.submit({"steps": 1, "step_seconds": 0})
    stack.wait_status(second, "SUCCEEDED")
    job = stack.job(job_id)
    assert job["status"] == "CANCELLED" and job["attempts"] == 0
    r = stack.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=stack.headers)
    assert r.status_code == 409


def test_redis_down_gives_503_and_leaves_no_row(tmp_path: Path, redis_server: Any,
                                                database_url: str) -> None:
    # A bearer token (checked against the issuer's JWKS, not Redis) reaches the enqueue step;
    # a browser session would be refused earlier, since sessions live in Redis too.
    home = tmp_path / "idp"
    home.mkdir()
    with start_issuer(home) as issuer:
        app = build_app(tmp_path, database_url, redis_server.url, ISSUER_URL=issuer.url,
                        CA_BUNDLE=str(issuer.ca),
                        CLIENT_SECRET=issuer.secret("modelgate-panel"))
        token = msal.ConfidentialClientApplication(
            "modelgate-ci", client_credential=issuer.secret("modelgate-ci"),
            oidc_authority=issuer.url, http_client=issuer.session(),
        ).acquire_token_for_client(["api://modelgate/.default"])["access_token"]
        bearer = {"Authorization": f"Bearer {token}"}
        client = app.test_client()
        redis_server.kill()
        r = client.post("/api/v1/jobs", json={"kind": "selfcheck"}, headers=bearer)
        assert r.status_code == 503
        assert r.mimetype == "application/problem+json"
        assert "not queued" in r.get_json()["detail"]
        assert client.get("/api/v1/jobs", headers=bearer).get_json()["jobs"] == []
        assert client.get("/health").status_code == 200
        assert client.get("/health?deep=1").status_code == 503
