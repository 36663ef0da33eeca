"""The promotion flow in a real browser on the whole stack (`modelgate up`): CI requests v1 for
prod (`modelgate pipeline run --environment prod --wait`), bob approves, and the approval alone
makes prod answer carol's score tester; alice requests v2, bob approves, carol's tester answers
with v2 (no REST call in between); alice rolls back, prod serves v1 again, and the timeline
shows all of it in order."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from app.client import EXAMPLE_REQUEST
from tests.e2e.shots import screenshot_path
from tests.support import ROOT, wait_for

pytestmark = pytest.mark.e2e
pytest.importorskip("playwright.sync_api")
# One quick candidate; short drains so each deploy takes seconds, not half a minute.
PIPELINE_YAML = """\
model:
  cv_folds: 3
  importance_repeats: 2
  candidates:
    - family: logistic_regression
      params: {max_iter: 1000}
environments:
  prod: {replicas: 1, cpu: 0.25, memory_mb: 256}
"""


class Stack:
    """A running `modelgate up` and the CI client's view of it."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.endpoints = json.loads((home / "endpoints.json").read_text())
        self.credentials = json.loads((home / "dev-credentials.json").read_text())
        self.token = self.modelgate("token").stdout.strip()
        self.http = requests.Session()
        self.http.trust_env = False
        self.http.verify = self.endpoints["ca_bundle"]

    def modelgate(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "app", *args], cwd=str(ROOT), env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.request(method, self.endpoints["panel"] + "/api/v1" + path,
                                     json=body, timeout=30,
                                     headers={"Authorization": f"Bearer {self.token}"})
        assert response.status_code < 300, response.text
        return response.json()

    def job(self, kind: str, params: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
        job_id = self.api("POST", "/jobs", {"kind": kind, "params": params})["id"]
        return self.wait_job(job_id, timeout)

    def wait_job(self, job_id: str, timeout: float = 300) -> dict[str, Any]:
        job = wait_for(lambda: (j := self.api("GET", f"/jobs/{job_id}"))["status"]
                       in ("SUCCEEDED", "FAILED", "CANCELLED") and j, timeout, f"job {job_id}")
        assert job["status"] == "SUCCEEDED", job
        return job

    def score(self) -> requests.Response:
        return self.http.post(self.endpoints["gateway"] + "/credit-risk/score",
                              json=EXAMPLE_REQUEST, timeout=10,
                              headers={"Authorization": f"Bearer {self.token}"})

    def prod_version(self) -> str:
        """The version prod serves through the gateway (which re-reads its config within 1 s)."""
        response = wait_for(lambda: (r := self.score()).status_code != 404 and r, 10,
                            "the gateway to pick up the prod API")
        assert response.status_code == 200, response.text
        return str(response.json()["model"]["version"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("promotion")
    home = root / "instance"
    pipeline = root / "pipeline.yml"
    pipeline.write_text(PIPELINE_YAML)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    env.update({"MODELGATE_HOME": str(home), "MODELGATE_PIPELINE_CONFIG": str(pipeline),
                "MODELGATE_DEPLOY_DRAIN_SECONDS": "1"})
    up = subprocess.Popen([sys.executable, "-m", "app", "up", "--panel-port", "0",
                           "--issuer-port", "0", "--gateway-port", "0"],
                          cwd=str(ROOT), env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: (home / "endpoints.json").exists() or up.poll() is not None, 120,
                 "endpoints.json")
        assert up.poll() is None, "modelgate up exited"
        yield Stack(home, env)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)


def _signed_in(browser: Any, stack: Stack, user: str) -> Any:
    """A fresh browser profile signed in through the issuer's form."""
    context = browser.new_context(ignore_https_errors=True)
    context.set_default_timeout(20_000)
    page = context.new_page()
    panel = stack.endpoints["panel"]
    page.goto(f"{panel}/")
    page.click("#sign-in")
    page.wait_for_url(f"{stack.endpoints['issuer']}/authorize*")
    page.fill("#username", user)
    page.fill("#password", stack.credentials["users"][user]["password"])
    page.click("button[type=submit]")
    try:
        # Each role lands on its own start page (approvers on the inbox).
        page.wait_for_url(lambda url: url.startswith(f"{panel}/") and "/auth/" not in url)
    except Exception:
        raise AssertionError(f"{user} did not land on the panel: {page.url}\n"
                             f"{page.content()[:3000]}") from None
    return page


def _approve(bob: Any, panel: str, promotion_id: str, comment: str) -> str:
    """bob approves from the inbox, follows the job page until it succeeded; the job's id."""
    bob.goto(f"{panel}/approvals/")
    bob.fill(f"[data-comment='{promotion_id}']", comment)
    bob.click(f"[data-approve='{promotion_id}']")
    bob.wait_for_url(f"{panel}/jobs/*")
    # The job page follows the job live; the browser waits for the final badge.
    bob.wait_for_selector("[data-field=status] .badge-succeeded", timeout=300_000)
    return str(bob.url.rstrip("/").rsplit("/", 1)[1])


def _tester_answer(carol: Any, panel: str) -> tuple[str, str]:
    """carol scores the example record on prod in the score tester: (label, model line)."""
    carol.goto(f"{panel}/score/?environment=prod")
    carol.click("#score-submit")
    carol.wait_for_selector("#score-label")
    return carol.text_content("#score-label").strip(), carol.text_content("#score-model")


def test_request_approve_serve_rollback_timeline(stack: Stack, browser: Any) -> None:
    panel = stack.endpoints["panel"]
    # v1 on staging with its API (the pipeline; staging is not protected).
    stack.modelgate("pipeline", "run", timeout=900)
    # prod is protected: a direct deploy is refused at submit, and nothing is queued.
    refused = stack.http.post(panel + "/api/v1/jobs", timeout=30,
                              json={"kind": "deploy", "params": {"environment": "prod"}},
                              headers={"Authorization": f"Bearer {stack.token}"})
    assert refused.status_code == 403 and "/approvals/new" in refused.json()["detail"]
    # CI asks for v1 (what staging serves) on prod and waits for the decision and the job.
    ci = subprocess.Popen([sys.executable, "-m", "app", "pipeline", "run", "--environment",
                           "prod", "--reason", "first release", "--wait", "--timeout", "600"],
                          cwd=str(ROOT), env=stack.env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        bob = _signed_in(browser, stack, "bob")

        def requested() -> str | None:
            bob.goto(f"{panel}/approvals/")
            pending = bob.locator("[data-pending]")
            return pending.get_attribute("data-pending") if pending.count() == 1 else None

        first = wait_for(requested, 60, "the CI's promotion request in the inbox")
        plan = bob.locator(f"[data-plan='{first}']").inner_text()
        assert "deploys v1 to prod blue/green" in plan
        assert "then publishes credit-risk revision 1" in plan
        _approve(bob, panel, first, "first release")
        out, err = ci.communicate(timeout=300)
    finally:
        if ci.poll() is None:
            ci.kill()
            ci.wait()
    assert ci.returncode == 0, out + err
    assert "approved by bob" in out and "succeeded" in out
    # The approval alone made prod callable: carol's tester answers from v1.
    carol = _signed_in(browser, stack, "carol")
    label, model = _tester_answer(carol, panel)
    assert label in ("good", "bad") and "german-credit version 1" in model
    stack.job("train", {}, timeout=600)
    stack.job("deploy", {"environment": "staging", "version": "2"})

    # From here on only the browser: request, approve, score.
    alice = _signed_in(browser, stack, "alice")
    alice.goto(f"{panel}/deployments/")
    prod_card = alice.locator("#env-prod")
    assert prod_card.locator("[data-action=request-promotion]").count() == 1
    assert prod_card.locator("[data-action=deploy]").count() == 0
    assert "bob" in prod_card.locator("[data-figure=approved-by]").inner_text()
    alice.goto(f"{panel}/approvals/new")
    alice.select_option("#promotion-version", "2")
    alice.fill("#promotion-reason", "v2 is better on staging")
    alice.click("#promotion-submit")
    alice.wait_for_url(f"{panel}/approvals/*")
    assert alice.locator("[data-state=PENDING]").count() == 1
    promotion_id = alice.url.rstrip("/").rsplit("/", 1)[1]

    bob.goto(f"{panel}/")
    assert bob.locator("#approvals-badge").inner_text().strip() == "1"
    bob.goto(f"{panel}/approvals/")
    card = bob.locator(f"[data-pending='{promotion_id}']")
    assert "v2 is better on staging" in card.inner_text()
    assert card.locator("[data-staging] .badge-succeeded").count() == 1  # v2 serves staging
    assert "deploys v2 to prod blue/green" in card.locator("[data-plan]").inner_text()
    bob.screenshot(path=str(screenshot_path("approvals-inbox.png")), full_page=True)
    _approve(bob, panel, promotion_id, "metrics and smoke test fine")
    label, model = _tester_answer(carol, panel)
    assert label in ("good", "bad") and "german-credit version 2" in model
    assert stack.prod_version() == "2"
    while_v2 = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")

    alice.goto(f"{panel}/approvals/new")
    assert alice.locator("#prod-version").inner_text().strip() == "v2"
    alice.select_option("#rollback-version", "1")
    alice.fill("#rollback-reason", "rolling back to check a complaint")
    alice.click("#rollback-submit")
    alice.wait_for_url(f"{panel}/jobs/*")
    stack.wait_job(alice.url.rstrip("/").rsplit("/", 1)[1])
    assert stack.prod_version() == "1"
    bob.goto(f"{panel}/approvals/")
    assert "rolled back by alice: rolling back to check a complaint" in \
        bob.locator("#rollbacks").inner_text()

    alice.goto(f"{panel}/audit/timeline?environment=prod")
    steps = alice.locator("#timeline li").evaluate_all(
        "items => items.map(i => [i.dataset.action, i.dataset.version || ''])")
    wanted = [["promotion.requested", "2"], ["promotion.approved", "2"],
              ["deployment.traffic-switched", "2"], ["deployment.deployed", "2"],
              ["deployment.rolled-back", "1"], ["deployment.traffic-switched", "1"],
              ["deployment.deployed", "1"]]
    positions = [steps.index(step, steps.index(wanted[0])) for step in wanted]
    assert positions == sorted(positions), steps
    alice.screenshot(path=str(screenshot_path("timeline.png")), full_page=True)
    alice.goto(f"{panel}/audit/timeline?environment=prod&at={while_v2}")
    assert alice.locator("#served-answer").get_attribute("data-version") == "2"
    served = alice.locator("#calls tr[data-version]").evaluate_all(
        "rows => rows.map(r => r.dataset.version)")
    assert {"1", "2"} <= set(served)
