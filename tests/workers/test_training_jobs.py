"""Provision and train jobs end to end: real Redis, a real worker process, real training."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import build_app, csrf_headers, sign_in
from tests.support import RedisServer, WorkerProcess, child_env, wait_for

CSV = Path(__file__).resolve().parents[2] / "data" / "german_credit_data.csv"
# The worker reads this file for every job, so a test can break it and restore it.
PIPELINE_YAML = """\
model:
  importance_repeats: 3
"""


class Stack:
    """The panel app with alice signed in, one worker, and the pipeline file it reads."""

    def __init__(self, home: Path, app: Any, pipeline: Path) -> None:
        self.home, self.app, self.pipeline = home, app, pipeline
        self.client = app.test_client()
        sign_in(self.client, "alice")
        self.headers = csrf_headers(self.client)

    def submit(self, kind: str, params: dict[str, Any] | None = None) -> str:
        r = self.client.post("/api/v1/jobs", json={"kind": kind, "params": params or {}},
                             headers=self.headers)
        assert r.status_code == 202, r.get_json()
        return str(r.get_json()["id"])

    def finish(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.client.get(f"/api/v1/jobs/{job_id}?log=1").get_json()
            return job if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

        return dict(wait_for(done, timeout, f"job {job_id} to end", interval=0.25))

    def run(self, kind: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.finish(self.submit(kind, params))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("home")
    redis = RedisServer(home / "redis").start()
    db_url = f"sqlite:///{home / 'modelgate.db'}"
    pipeline = home / "pipeline.yml"
    pipeline.write_text(PIPELINE_YAML)
    app = build_app(home, db_url, redis.url)
    worker = WorkerProcess(home, child_env(home, db_url, redis.url,
                                           PIPELINE_CONFIG=str(pipeline)),
                           concurrency=1).start()
    try:
        yield Stack(home, app, pipeline)
    finally:
        worker.stop()
        redis.stop()


@pytest.fixture(scope="module")
def trained(stack: Stack) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two train jobs with identical inputs: one from the API, one from the Train button."""
    first = stack.run("train")
    assert first["status"] == "SUCCEEDED", first
    # The registry page's Train button posts this form (with the page's CSRF token).
    page = stack.client.get("/models/german-credit").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token and 'name="kind" value="train"' in page
    r = stack.client.post("/jobs/", data={"kind": "train", "csrf_token": token.group(1)})
    assert r.status_code == 302
    second = stack.finish(r.headers["Location"].rstrip("/").rsplit("/", 1)[1])
    assert second["status"] == "SUCCEEDED", second
    return first, second


def _messages(job: dict[str, Any]) -> list[str]:
    return [line["message"] for line in job["log"]]


def test_provision_twice_reports_existing_then_teardown(stack: Stack) -> None:
    first = stack.run("provision")
    assert first["status"] == "SUCCEEDED", first
    created = set(first["result"]["created"])
    assert {"environment:staging", "environment:prod", "experiment:german-credit",
            "runtime-settings", "gateway-settings", "workspace:modelgate-local",
            "folder:datasets"} <= created
    assert any(item.startswith("dataset:german-credit@") for item in created)
    assert first["result"]["environments"]["prod"]["replicas"] == 2
    assert (stack.home / "runtime" / "settings.json").is_file()
    assert (stack.home / "gateway" / "settings.json").is_file()
    assert any(m.startswith("created: environment:staging") for m in _messages(first))

    second = stack.run("provision")
    assert second["status"] == "SUCCEEDED", second
    assert second["result"]["created"] == [] and second["result"]["updated"] == []
    assert set(second["result"]["existing"]) == created
    assert any(m.startswith("already existed: dataset:german-credit@")
               for m in _messages(second))
    with stack.app.app_context():
        from app.services import environments

        rows = environments.list_environments("modelgate-local")
        assert [r.name for r in rows] == ["prod", "staging"]
        assert rows[1].settings == {"replicas": 1, "cpu": 0.25, "memory_mb": 256}

    down = stack.run("provision", {"teardown": True})
    assert down["status"] == "SUCCEEDED", down
    assert sorted(down["result"]["removed_environments"]) == ["prod", "staging"]
    assert not (stack.home / "workspace.json").exists()
    assert not (stack.home / "runtime" / "settings.json").exists()
    assert (stack.home / "datasets" / "german-credit" / "1").is_dir()  # data is kept
    with stack.app.app_context():
        assert environments.list_environments() == []

    again = stack.run("provision")
    assert again["status"] == "SUCCEEDED", again
    assert "environment:staging" in again["result"]["created"]
    assert "experiment:german-credit" in again["result"]["created"]  # restored
    assert any(i.startswith("dataset:") for i in again["result"]["existing"])


def test_bad_pipeline_key_fails_the_job_naming_it(stack: Stack) -> None:
    stack.pipeline.write_text("environments:\n  staging: {replicas: 0}\n")
    try:
        job = stack.run("provision")
    finally:
        stack.pipeline.write_text(PIPELINE_YAML)
    assert job["status"] == "FAILED"
    assert "environments.staging.replicas: must be an integer 1..10" in job["error"]
    assert job["attempts"] == 1


def test_train_job_registers_version_with_lineage(
        stack: Stack, trained: tuple[dict[str, Any], dict[str, Any]]) -> None:
    first, _ = trained
    result = first["result"]
    assert result["model"]["name"] == "german-credit"
    assert result["family"] in ("logistic_regression", "gradient_boosting")
    assert result["metrics"]["roc_auc"] >= 0.75
    assert 0 < result["threshold"] < 1
    sha = hashlib.sha256(CSV.read_bytes()).hexdigest()
    assert result["dataset"]["sha256"] == sha
    assert first["progress"] == 100
    assert any(m.startswith("registered german-credit version") for m in _messages(first))

    body = stack.client.get("/api/v1/models/german-credit/versions").get_json()
    by_version = {v["version"]: v for v in body["versions"]}
    version = by_version[result["model"]["version"]]
    assert version["tags"]["job_id"] == first["id"]
    assert version["tags"]["dataset_sha256"] == sha
    assert version["tags"]["dataset_version"] == str(result["dataset"]["version"])
    assert version["lineage"]["job_id"] == first["id"]
    assert version["lineage"]["run_id"] == result["model"]["run_id"]
    assert (stack.home / "models" / "german-credit" / result["model"]["version"]
            / "signature.json").is_file()
    # The worker computed the fairness report: in the log, the package and the versions API.
    assert any(m.startswith("fairness on the held-out part") and "; by age " in m
               for m in _messages(first))
    assert set(result["fairness"]) == {"sex", "age"}
    report = version["fairness"]["report"]
    assert [a["name"] for a in report["attributes"]] == ["sex", "age"]
    assert report["n"] == 200 and report["threshold"] == result["threshold"]
    assert version["fairness"]["gate"]["passed"] is True  # the shipped gate: AUC >= 0.7


def test_identical_inputs_give_new_run_and_version_with_identical_metrics(
        stack: Stack, trained: tuple[dict[str, Any], dict[str, Any]]) -> None:
    first, second = (job["result"] for job in trained)
    assert int(second["model"]["version"]) == int(first["model"]["version"]) + 1
    assert second["model"]["run_id"] != first["model"]["run_id"]
    assert second["metrics"] == first["metrics"]
    assert second["threshold"] == first["threshold"]
    assert second["dataset"] == {**first["dataset"], "created": False}

    a, b = first["model"]["version"], second["model"]["version"]
    page = stack.client.get(f"/models/german-credit/compare?a={a}&b={b}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert f"Version {a}" in html and f"Version {b}" in html
    assert first["model"]["run_id"] in html and second["model"]["run_id"] in html
    assert "<svg" in html


@pytest.mark.parametrize("params,field", [
    ({"model": {"cv_folds": 1}}, "params.model.cv_folds"),
    ({"model": {"candidates": [{"family": "svm"}]}}, "params.model.candidates[0].family"),
    ({"epochs": 3}, "params.epochs"),
])
def test_malformed_train_params_are_refused_naming_the_parameter(
        stack: Stack, params: dict[str, Any], field: str) -> None:
    from tests.support import refused_at_submit

    body = refused_at_submit(stack.client, stack.headers, "train", params)
    assert field in body["detail"]


def test_a_missing_dataset_version_fails_the_job_naming_it(stack: Stack) -> None:
    job = stack.run("train", {"dataset_version": 99})
    assert job["status"] == "FAILED"
    assert "params.dataset_version" in job["error"]


def test_cancelled_train_job_registers_nothing(
        stack: Stack, trained: tuple[dict[str, Any], dict[str, Any]]) -> None:
    before = stack.client.get("/api/v1/models/german-credit/versions").get_json()["versions"]
    job_id = stack.submit("train")
    wait_for(lambda: stack.client.get(f"/api/v1/jobs/{job_id}").get_json()["progress"] > 0,
             60, "the train job to start")
    r = stack.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=stack.headers)
    assert r.status_code == 200
    job = stack.finish(job_id)
    assert job["status"] == "CANCELLED", job
    after = stack.client.get("/api/v1/models/german-credit/versions").get_json()["versions"]
    assert [v["version"] for v in after] == [v["version"] for v in before]
    assert all(v["tags"]["job_id"] != job_id for v in after)
