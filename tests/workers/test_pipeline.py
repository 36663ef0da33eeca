"""The pipeline job on a real worker: children in order, failure and cancellation propagate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import build_app, csrf_headers, sign_in
from tests.support import RedisServer, WorkerProcess, child_env, wait_for

PIPELINE_YAML = """\
model:
  importance_repeats: 3
"""
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


class Stack:
    """The panel app with alice signed in, a worker with two slots, and its pipeline file."""

    def __init__(self, home: Path, app: Any, pipeline: Path) -> None:
        self.home, self.app, self.pipeline = home, app, pipeline
        self.client = app.test_client()
        sign_in(self.client, "alice")
        self.headers = csrf_headers(self.client)

    def submit(self, params: dict[str, Any]) -> str:
        r = self.client.post("/api/v1/jobs", json={"kind": "pipeline", "params": params},
                             headers=self.headers)
        assert r.status_code == 202, r.get_json()
        return str(r.get_json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"/api/v1/jobs/{job_id}?log=1").get_json())

    def children(self, job_id: str) -> list[dict[str, Any]]:
        jobs = self.client.get(f"/api/v1/jobs?parent_id={job_id}").get_json()["jobs"]
        return sorted(jobs, key=lambda j: j["created_at"])

    def finish(self, job_id: str, timeout: float = 180) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in FINAL else None

        return dict(wait_for(done, timeout, f"job {job_id} to end", interval=0.25))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("home")
    redis = RedisServer(home / "redis").start()
    db_url = f"sqlite:///{home / 'modelgate.db'}"
    pipeline = home / "pipeline.yml"
    pipeline.write_text(PIPELINE_YAML)
    app = build_app(home, db_url, redis.url)
    # The parent holds one slot while its child runs in the other.
    worker = WorkerProcess(home, child_env(home, db_url, redis.url,
                                           PIPELINE_CONFIG=str(pipeline)),
                           concurrency=2).start()
    try:
        yield Stack(home, app, pipeline)
    finally:
        worker.stop()
        redis.stop()


def test_stages_run_in_order_as_children(stack: Stack) -> None:
    parent_id = stack.submit({"until": "train"})
    parent = stack.finish(parent_id)
    assert parent["status"] == "SUCCEEDED", parent
    children = stack.children(parent_id)
    assert [c["kind"] for c in children] == ["provision", "train"]
    assert all(c["status"] == "SUCCEEDED" and c["parent_id"] == parent_id for c in children)
    assert all(c["requested_by"] == "alice" for c in children)
    assert children[0]["finished_at"] <= children[1]["started_at"]
    assert parent["progress"] == 100
    assert [s["stage"] for s in parent["result"]["stages"]] == ["provision", "train"]
    messages = [line["message"] for line in parent["log"]]
    assert any("train (2/2)" in m for m in messages), messages


def test_a_failed_child_fails_the_pipeline_with_its_error(stack: Stack) -> None:
    good = stack.pipeline.read_text()
    stack.pipeline.write_text("model:\n  importance_repeats: many\n")
    try:
        parent = stack.finish(stack.submit({"until": "train"}))
    finally:
        stack.pipeline.write_text(good)
    assert parent["status"] == "FAILED"
    children = stack.children(parent["id"])
    assert [c["kind"] for c in children] == ["provision"]  # train never queued
    assert children[0]["status"] == "FAILED"
    assert parent["error"].startswith(f"provision job {children[0]['id']} failed: ")
    assert children[0]["error"] in parent["error"]


def test_cancelling_the_pipeline_cancels_the_running_child(stack: Stack) -> None:
    parent_id = stack.submit({"until": "train"})

    def train_running() -> dict[str, Any] | None:
        for child in stack.children(parent_id):
            if child["kind"] == "train" and child["status"] == "RUNNING":
                return child
        return None

    train = wait_for(train_running, 120, "the train child to run", interval=0.1)
    r = stack.client.post(f"/api/v1/jobs/{parent_id}/cancel", headers=stack.headers)
    assert r.status_code == 200
    parent = stack.finish(parent_id)
    assert parent["status"] == "CANCELLED", parent
    child = stack.finish(train["id"])
    assert child["status"] == "CANCELLED", child
    assert any(f"cancelling child job {train['id']}" in line["message"]
               for line in parent["log"])


def test_bad_parameters_fail_naming_them(stack: Stack) -> None:
    from tests.support import refused_at_submit

    body = refused_at_submit(stack.client, stack.headers, "pipeline", {"until": "serve"})
    assert "params.until" in body["detail"]
    body = refused_at_submit(stack.client, stack.headers, "pipeline", {"environment": "qa"})
    assert "params.environment" in body["detail"]


def test_cancelling_a_stage_stops_the_pipeline(stack: Stack) -> None:
    parent_id = stack.submit({"until": "train"})

    def train_running() -> dict[str, Any] | None:
        for child in stack.children(parent_id):
            if child["kind"] == "train" and child["status"] == "RUNNING":
                return child
        return None

    train = wait_for(train_running, 120, "the train child to run", interval=0.1)
    r = stack.client.post(f"/api/v1/jobs/{train['id']}/cancel", headers=stack.headers)
    assert r.status_code == 200
    assert stack.finish(train["id"])["status"] == "CANCELLED"
    parent = stack.finish(parent_id)
    assert parent["status"] == "CANCELLED", parent
    assert any("was cancelled; stopping the pipeline" in line["message"]
               for line in parent["log"])


def test_the_plan_job_reads_the_backend_and_changes_nothing(stack: Stack) -> None:
    r = stack.client.post("/api/v1/jobs", json={"kind": "provision"}, headers=stack.headers)
    assert stack.finish(r.get_json()["id"])["status"] == "SUCCEEDED"
    workspace = stack.home / "workspace.json"
    before = workspace.stat().st_mtime_ns
    r = stack.client.post("/api/v1/jobs", json={"kind": "plan"}, headers=stack.headers)
    assert r.status_code == 202, r.get_json()
    job = stack.finish(r.get_json()["id"])
    assert job["status"] == "SUCCEEDED", job
    actions = {i["kind"]: i["action"] for i in job["result"]["items"]}
    assert actions["Workspace record"] == "no change"
    assert actions["Dataset version"] == "no change"
    assert job["result"]["offline"] is False
    assert any(line["message"].startswith("plan: ") for line in job["log"])
    assert workspace.stat().st_mtime_ns == before
    page = stack.client.get(f"/jobs/{job['id']}").get_data(as_text=True)
    assert "data-plan" in page and "No change" in page
    r = stack.client.post("/api/v1/jobs", json={"kind": "plan", "params": {"offline": "yes"}},
                          headers=stack.headers)
    assert r.status_code == 422 and "offline" in str(r.get_json())
