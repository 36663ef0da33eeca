"""The panel as people use it: chromium against the whole local stack (`python -m app up`).

alice runs the pipeline from the dashboard and watches the four stages turn green without a
reload; carol scores the example record through the real gateway with her own token, and sees
the gateway's field error beside the field she got wrong; a tester sees no engineer actions and
a forged job POST is refused. Screenshots go outside the tree (tests/e2e/shots.py)..
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.shots import screenshot_path
from tests.support import ROOT, wait_for

pytestmark = pytest.mark.e2e
pytest.importorskip("playwright.sync_api")
STAGES = ("infrastructure", "model", "deployment", "api")
PIPELINE_TIMEOUT_MS = 240_000


@dataclass
class Stack:
    """The running stack: its URLs and the dev users' passwords."""

    home: Path
    panel: str
    issuer: str
    gateway: str
    users: dict[str, Any]

    def password(self, user: str) -> str:
        """A dev user's password from dev-credentials.json."""
        return str(self.users[user]["password"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`python -m app up` on free ports in a fresh MODELGATE_HOME; SIGINT at the end."""
    home = tmp_path_factory.mktemp("instance")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    env.update(MODELGATE_HOME=str(home), MODELGATE_SSE_MAX_SECONDS="20",
               MODELGATE_DEPLOY_DRAIN_SECONDS="1")
    log = home / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "app", "up", "--panel-port", "0", "--issuer-port", "0",
             "--gateway-port", "0"],
            cwd=str(ROOT), env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        endpoints_file = home / "endpoints.json"
        wait_for(lambda: endpoints_file.exists() or up.poll() is not None, 120,
                 "endpoints.json")
        assert up.poll() is None, log.read_text()
        endpoints = json.loads(endpoints_file.read_text())
        users = json.loads((home / "dev-credentials.json").read_text())["users"]
        yield Stack(home, endpoints["panel"], endpoints["issuer"], endpoints["gateway"], users)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)


@pytest.fixture
def context(stack: Stack, browser: Any) -> Iterator[Any]:
    """A fresh browser profile at laptop width (`stack` first: it is torn down last)."""
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


def sign_in(ctx: Any, stack: Stack, username: str, landing: str) -> Any:
    """Sign in through the issuer's form; return the page on the role's landing page."""
    page = ctx.new_page()
    page.goto(f"{stack.panel}/")
    page.click("#sign-in")
    page.wait_for_url(f"{stack.issuer}/authorize*")
    page.fill("#username", username)
    page.fill("#password", stack.password(username))
    page.click("button[type=submit]")
    page.wait_for_url(f"{stack.panel}{landing}")
    return page


def ensure_deployed(stack: Stack) -> None:
    """Run the pipeline as the CI client when this test runs without the dashboard test."""
    if (stack.home / "gateway" / "config.json").exists() and "staging/credit-risk" in (
            stack.home / "gateway" / "config.json").read_text():
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    env["MODELGATE_HOME"] = str(stack.home)
    subprocess.run([sys.executable, "-m", "app", "pipeline", "run"], cwd=str(ROOT), env=env,
                   check=True, timeout=PIPELINE_TIMEOUT_MS / 1000, capture_output=True)


def engineer_actions(page: Any) -> int:
    """Forms on the page that would queue a job."""
    return int(page.locator("form[action='/jobs/']").count())


def forged_job_post(page: Any) -> int:
    """POST /jobs/ from the page with its own CSRF token (only the role check can refuse it)."""
    status: int = page.evaluate(
        """async () => {
            const token = document.querySelector('meta[name="csrf-token"]').content;
            const r = await fetch('/jobs/', {method: 'POST', headers: {'X-CSRFToken': token},
                                              body: new URLSearchParams({kind: 'pipeline'})});
            return r.status;
        }""")
    return status


def test_alice_runs_the_pipeline_and_watches_the_stages_turn_green(context: Any,
                                                                    stack: Stack) -> None:
    page = sign_in(context, stack, "alice", "/")
    for key in STAGES:
        assert page.get_attribute(f".stage[data-stage={key}]", "data-status") == "NOT_RUN"
    assert engineer_actions(page) == 8  # four stages, the whole pipeline and three Plan buttons
    page.click("button[data-run=pipeline]")
    page.wait_for_url(f"{stack.panel}/")
    assert "Queued pipeline job" in page.text_content(".flash")
    # From here on the page must not reload: the stages change through the event stream.
    page.evaluate("window.notReloaded = true")
    seen_running = page.wait_for_selector(".stage[data-status=RUNNING], "
                                          ".stage[data-status=QUEUED]", timeout=30_000)
    assert seen_running is not None
    for key in STAGES:
        page.wait_for_selector(f".stage[data-stage={key}][data-status=SUCCEEDED]",
                               timeout=PIPELINE_TIMEOUT_MS)
    assert page.evaluate("window.notReloaded === true")
    assert "alice" in page.text_content(".stage[data-stage=api] [data-field=meta]")
    # The environment card follows: staging shows the deployed version and the API revision.
    page.wait_for_selector("#env-staging [data-field=model-version]", timeout=30_000)
    page.wait_for_selector("#env-staging [data-field=api-revision]", timeout=30_000)
    assert "v1" in page.text_content("#env-staging [data-field=model-version]")
    page.screenshot(path=str(screenshot_path("dashboard-live.png")), full_page=True)
    page.set_viewport_size({"width": 820, "height": 1100})
    page.screenshot(path=str(screenshot_path("dashboard-tablet.png")), full_page=True)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 820, f"the dashboard scrolls sideways at tablet width ({width} px)"

    page.set_viewport_size({"width": 1280, "height": 900})
    page.click(".last-pipeline a")
    page.wait_for_selector("[data-steps]")
    steps = page.locator("[data-steps] [data-status=SUCCEEDED]").count()
    assert steps == 4
    produced = page.text_content("[data-field=produced]")
    assert "Model german-credit version 1" in produced
    assert "API credit-risk-staging revision" in produced
    assert page.is_visible("[data-retry-form]")
    page.screenshot(path=str(screenshot_path("job-detail.png")), full_page=True)
    page.set_viewport_size({"width": 820, "height": 1100})
    assert page.evaluate("document.documentElement.scrollWidth") <= 820


def test_carol_scores_the_example_record_through_the_gateway(context: Any,
                                                             stack: Stack) -> None:
    ensure_deployed(stack)
    page = sign_in(context, stack, "carol", "/score/")
    assert page.input_value("#field-age") == "20"
    assert page.input_value("#field-purpose") == "radio/TV"
    # Every input has a label.
    for field_id in page.eval_on_selector_all(".score-form select, .score-form input[type=number]",
                                              "els => els.map(e => e.id)"):
        assert page.locator(f"label[for='{field_id}']").count() == 1, field_id
    # Keyboard only: focus the submit button and press Enter.
    page.focus("#score-submit")
    page.keyboard.press("Enter")
    page.wait_for_selector("#score-label")
    assert page.text_content("#score-label") in ("good", "bad")
    probabilities = page.locator("#score-probabilities dd").all_text_contents()
    assert len(probabilities) == 2
    assert abs(sum(float(p) for p in probabilities) - 1) < 0.01
    assert "german-credit version 1" in page.text_content("#score-model")
    assert page.text_content("#score-request-id").strip() not in ("", "–")
    html = page.content()
    assert "Bearer <your access token>" in page.text_content("#raw-request")
    assert "eyJ" not in html, "a JWT reached the page"
    assert "$MODELGATE_TOKEN" in page.text_content("#curl-snippet")
    page.screenshot(path=str(screenshot_path("score-tester.png")), full_page=True)

    # An invalid value: the gateway's message appears next to the field it names.
    page.fill("#field-age", "12")
    page.click("#score-submit")
    page.wait_for_selector("#field-age-error")
    assert "18" in page.text_content("#field-age-error")
    assert page.get_attribute("#field-age", "aria-invalid") == "true"
    assert page.text_content("#score-error").strip().startswith("422")
    page.screenshot(path=str(screenshot_path("score-tester-error.png")), full_page=True)
    page.set_viewport_size({"width": 820, "height": 1100})
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 820, f"the score tester scrolls sideways at tablet width ({width} px)"


def test_carol_sees_the_reasons_behind_a_score(context: Any, stack: Stack) -> None:
    """Reason codes as a bar chart with sentences, computed by the replica behind the gateway."""
    ensure_deployed(stack)
    page = sign_in(context, stack, "carol", "/score/")
    assert page.is_checked("#score-explain")
    assert '"explain": true' in page.text_content("#raw-request")
    page.select_option("#field-checking-account", "little")
    page.click("#score-submit")
    page.wait_for_selector("#score-reasons svg.reasons-chart")
    answer = json.loads(page.text_content("#raw-response"))
    prediction = answer["predictions"][0]
    factors = prediction["reasons"]["factors"]
    bars = page.locator("#score-reasons g.reason")
    assert bars.count() == len(factors) == 9
    sentences = page.locator("#score-reasons g.reason text").all_text_contents()
    checking = next(f for f in factors if f["field"] == "Checking account")
    expected = ("raises the risk" if checking["direction"] == "raises" else
                "lowers the risk" if checking["direction"] == "lowers" else "no effect")
    assert f"Checking account: little — {expected}" in sentences
    # largest first, red bars right of the centre line for what raises the risk of "bad"
    assert [bars.nth(i).get_attribute("data-field") for i in range(9)] == [
        f["field"] for f in factors]
    for i, factor in enumerate(factors):
        rect = bars.nth(i).locator("rect")
        x, width = float(rect.get_attribute("x")), float(rect.get_attribute("width"))
        if factor["contribution"] > 0:
            assert x == 200 and width > 0 and rect.get_attribute("fill") == "#c53030"
        elif factor["contribution"] < 0:
            assert abs(x + width - 200) < 0.01 and rect.get_attribute("fill") == "#1f8a4c"
    assert float(bars.nth(0).locator("rect").get_attribute("width")) == 190.0
    # the shown answer sums to the model's log-odds of "bad"
    p = prediction["probabilities"]
    total = prediction["reasons"]["base"] + sum(f["contribution"] for f in factors)
    assert abs(total - (math.log(p["bad"]) - math.log(p["good"]))) < 1e-9
    assert "log-odds" in page.text_content("#score-reasons figcaption")
    page.screenshot(path=str(screenshot_path("score-reasons.png")), full_page=True)
    page.set_viewport_size({"width": 820, "height": 1100})
    assert page.evaluate("document.documentElement.scrollWidth") <= 820
    # without explain: the same score, no chart
    page.set_viewport_size({"width": 1280, "height": 900})
    page.uncheck("#score-explain")
    page.click("#score-submit")
    page.wait_for_selector("#score-label")
    assert page.locator("#score-reasons").count() == 0
    assert not page.is_checked("#score-explain")
    assert "reasons" not in json.loads(page.text_content("#raw-response"))["predictions"][0]


def test_a_tester_sees_no_engineer_actions_and_a_forged_post_is_refused(context: Any,
                                                                        stack: Stack) -> None:
    page = sign_in(context, stack, "carol", "/score/")
    page.goto(f"{stack.panel}/")
    assert page.locator(".stage").count() == 4  # the dashboard is readable
    assert engineer_actions(page) == 0
    assert forged_job_post(page) == 403
    jobs = page.locator("table.jobs td a").first
    if jobs.count():
        jobs.click()
        page.wait_for_selector("[data-job-detail]")
        assert page.locator("[data-retry-form], [data-cancel-form]").count() == 0


def test_carol_scores_a_csv_in_chunks_and_downloads_the_predictions(context: Any,
                                                                    stack: Stack) -> None:
    ensure_deployed(stack)
    page = sign_in(context, stack, "carol", "/score/")
    header = "Age,Sex,Job,Housing,Saving accounts,Checking account,Credit amount,Duration,Purpose"
    rows = [f"{20 + i % 50},male,{i % 4},own,,little,{100 + i},48,radio/TV" for i in range(150)]
    rows[120] = "12,male,0,own,little,little,100,48,radio/TV"  # Age below the minimum
    csv_bytes = ("\r\n".join([header, *rows]) + "\r\n").encode()
    page.set_input_files("#batch-file", files=[{"name": "applicants.csv",
                                                 "mimeType": "text/csv", "buffer": csv_bytes}])
    page.click("#batch-submit")
    page.wait_for_selector("#batch-done:not([hidden])", timeout=60_000)
    assert page.evaluate("document.getElementById('batch-progress').value") == 100
    assert page.text_content("#batch-progress-text").startswith(
        "149 records scored, 1 refused")
    with page.expect_download() as download:
        page.click("#batch-download")
    lines = Path(download.value.path()).read_text().splitlines()
    assert len(lines) == 151
    assert lines[0].endswith(",label,p_bad,p_good,reason_1,reason_2,reason_3,model,error")
    scored = [line for i, line in enumerate(lines[1:]) if i != 120]
    assert all(",good," in line or ",bad," in line for line in scored)
    assert "Age: must be" in lines[121]
    # the top three reason codes of every scored row, as sentences
    table = list(csv.reader(lines))
    first = table[0].index("reason_1")
    for number, row in enumerate(table[1:]):
        reasons = row[first:first + 3]
        if number == 120:
            assert reasons == ["", "", ""]
        else:
            assert all(re.fullmatch(r"[A-Z][\w ]+: .+ — (raises|lowers) the risk", r)
                       for r in reasons), reasons
    # The calls just made show on the dashboard's staging card and its charts.
    def calls_shown() -> bool:
        # The gateway writes its request log in batches: reload until the calls are there.
        page.goto(f"{stack.panel}/")
        return float(page.text_content("#env-staging [data-field=calls-per-minute]") or 0) > 0

    wait_for(calls_shown, 30, "the staging card to show calls per minute", interval=1)
    assert page.locator("#env-staging svg.spark rect").count() >= 1
    page.screenshot(path=str(screenshot_path("dashboard-traffic.png")), full_page=True)
