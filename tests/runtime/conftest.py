"""A whole deployment stack of real processes: Redis, a worker, the runtime, the gateway.

Package-scoped (every module here shares one stack, in file order): the registry holds three
versions trained on the real CSV (logistic regression only, to keep it quick); the first one's
model file is broken on purpose for the failure test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import build_app, csrf_headers, sign_in
from tests.gateway.conftest import Issuer, LoopThread, free_port
from tests.support import ROOT, RedisServer, WorkerProcess, child_env, wait_for

CSV = ROOT / "data" / "german_credit_data.csv"
FAST_MODEL = {"candidates": [{"family": "logistic_regression", "params": {"max_iter": 1000}}],
              "importance_repeats": 2, "cv_folds": 3}
PIPELINE_YAML = """\
model:
  importance_repeats: 2
runtime:
  ready_timeout_seconds: {ready}
"""
EXAMPLE = {"Age": 20, "Sex": "male", "Job": 0, "Housing": "own", "Saving accounts": "little",
           "Checking account": "little", "Credit amount": 100, "Duration": 48,
           "Purpose": "radio/TV"}


class Process:
    """A child process with its log file, stopped by SIGTERM."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(argv, env=env, cwd=str(ROOT), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, timeout: float = 45) -> int | None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Stack:
    """Everything a deployment test drives."""

    home: Path
    app: Any
    env: dict[str, str]
    pipeline: Path
    issuer: Issuer
    gateway_url: str
    ca: str
    versions: list[str]
    runtime: Process
    processes: list[Process]
    seen_keys: set[str] = field(default_factory=set)
    worker: WorkerProcess | None = None

    def client(self, user: str = "alice") -> Any:
        client = self.app.test_client()
        sign_in(client, user)
        return client

    def submit(self, kind: str, params: dict[str, Any] | None = None) -> str:
        client = self.client()
        r = client.post("/api/v1/jobs", json={"kind": kind, "params": params or {}},
                        headers=csrf_headers(client))
        assert r.status_code == 202, r.get_json()
        return str(r.get_json()["id"])

    def finish(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        client = self.client()

        def done() -> dict[str, Any] | None:
            job = client.get(f"/api/v1/jobs/{job_id}?log=1").get_json()
            return job if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

        return dict(wait_for(done, timeout, f"job {job_id} to end", interval=0.25))

    def run(self, kind: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.finish(self.submit(kind, params))

    def promote(self, version: str, environment: str = "prod") -> dict[str, Any]:
        """Deploy to a protected environment the only way there is: alice requests, bob
        approves; return the approval's job once it ended."""
        alice, bob = self.client("alice"), self.client("bob")
        r = alice.post("/api/v1/promotions", headers=csrf_headers(alice),
                       json={"version": version, "environment": environment,
                             "reason": "tested on staging"})
        assert r.status_code == 201, r.get_json()
        r = bob.post(f"/api/v1/promotions/{r.get_json()['id']}/approve",
                     headers=csrf_headers(bob), json={})
        assert r.status_code == 200, r.get_json()
        return self.finish(str(r.get_json()["deploy_job_id"]))

    def token(self) -> str:
        return self.issuer.mint(roles=["Score.Invoke"], exp=int(time.time()) + 1800)

    def score(self, path: str = "staging/credit-risk") -> requests.Response:
        return requests.post(f"{self.gateway_url}/{path}/score", json={"data": [EXAMPLE]},
                             headers={"Authorization": f"Bearer {self.token()}"},
                             verify=self.ca, timeout=10)

    def keys(self, environment: str = "staging") -> tuple[str, str, str]:
        """(url, primary, secondary) of the active slot, read as the admin reveal does."""
        from app.services import deployments
        from app.services.backend import backend, slot_ref

        with self.app.app_context():
            row = deployments.active_row(environment)
            assert row is not None
            keys = backend().slot_keys(slot_ref(row))
            primary, secondary = keys.primary, keys.secondary
            self.seen_keys.update((primary, secondary))
            return deployments.base_url(row), primary, secondary

    def start_runtime(self) -> Process:
        proc = Process([sys.executable, "-m", "app", "runtime"], self.env,
                       self.home / "runtime-process.log")
        marker = self.home / "run" / "runtime.ready"
        wait_for(lambda: marker.exists() and marker.read_text() == str(proc.process.pid)
                 or proc.process.poll() is not None, 30, "runtime ready")
        assert proc.process.poll() is None, proc.log()
        self.runtime = proc
        return proc

    def status(self) -> dict[str, Any]:
        return dict(json.loads((self.home / "runtime" / "status.json").read_text()))


def publish_staging(stack: Stack) -> None:
    """What the publish job does for staging (it is another engineer's job)."""
    from app.backends.local import gateway as gateway_config
    from app.gateway.template import render_default_policy

    gateway_config.upsert_api(stack.home, {
        "name": "credit-risk-staging", "path": "staging/credit-risk", "revision": 1,
        "environment": "staging", "backend_url": "http://127.0.0.1:9",
        "operations": [{"id": "score", "method": "POST", "url_template": "/score"}],
        "policy_xml": render_default_policy(issuer=stack.issuer.url, environment="staging",
                                            clock_skew_s=30)})


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from app.ml.workflow import train_and_register
    from app.pki import ensure_tls

    home = tmp_path_factory.mktemp("deploy-home")
    versions = [train_and_register(home, CSV, job_id=f"seed-{i}", config=FAST_MODEL)
                .model.version for i in (1, 2, 3)]
    # Version 1 cannot load: its slot never gets ready (the failed-deploy test).
    (home / "models" / "german-credit" / versions[0] / "model.joblib").write_bytes(b"broken")
    tls = ensure_tls(home)
    redis = RedisServer(home / "redis").start()
    db_url = f"sqlite:///{home / 'modelgate.db'}"
    pipeline = home / "pipeline.yml"
    pipeline.write_text(PIPELINE_YAML.format(ready=60))
    loop = LoopThread()
    issuer = Issuer(loop, home)
    # The publish step of an approved promotion renders the default policy for this issuer.
    app = build_app(home, db_url, redis.url, DEPLOY_DRAIN_SECONDS=2,
                    KEY_SWITCH_GRACE_SECONDS=1.5, ISSUER_URL=issuer.url)
    env = child_env(home, db_url, redis.url, PIPELINE_CONFIG=str(pipeline),
                    DEPLOY_DRAIN_SECONDS=2, KEY_SWITCH_GRACE_SECONDS=1.5,
                    ISSUER_URL=issuer.url)
    processes: list[Process] = []
    worker = WorkerProcess(home, env, concurrency=1)
    try:
        worker.start()
        gw_port = free_port()
        gateway = Process([sys.executable, "-m", "app.gateway", "--home", str(home), "--port",
                           str(gw_port), "--redis-url", redis.url], env, home / "gateway.log")
        processes.append(gateway)
        stack = Stack(home, app, env, pipeline, issuer, f"https://127.0.0.1:{gw_port}",
                      str(tls.ca_cert), versions, None, processes)  # type: ignore[arg-type]
        stack.worker = worker
        stack.start_runtime()

        def gateway_up() -> bool:
            try:
                return requests.get(f"{stack.gateway_url}/health", verify=stack.ca,
                                    timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_for(gateway_up, 30, "gateway up")
        yield stack
    finally:
        worker.stop()
        if "stack" in locals():
            stack.runtime.stop()
        for proc in processes:
            proc.stop()
        issuer.stop()
        loop.stop()
        redis.stop()


@pytest.fixture()
def deployed(stack: Stack) -> Stack:
    """Staging has an active slot and its API is published (deploys it when not)."""
    from app.services import deployments

    with stack.app.app_context():
        current = deployments.active("staging")
    if current is None:
        job = stack.run("deploy")
        assert job["status"] == "SUCCEEDED", job
    publish_staging(stack)
    wait_for(lambda: stack.score().status_code == 200, 10, "scoring through the gateway")
    return stack
