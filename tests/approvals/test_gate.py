"""The fairness and performance gate on promotion: a version trained on a skewed sample is
marked, approving it needs an audited override, the API answers the gate and the report, the
pages show the report beside prod's, and the model card gathers it all."""

from __future__ import annotations

import re
from typing import Any

import pytest

from app.db import Job, Promotion
from app.extensions import db
from app.pipeline_config import GateSettings
from app.services import audit, promotions
from app.services.fairness import evaluate_gate
from tests.approvals import gate_fixtures
from tests.approvals.conftest import client_for, record_deploy
from tests.approvals.gate_fixtures import GATE, sex_ratio
from tests.conftest import csrf_headers

# The fixtures of tests/approvals/gate_fixtures.py: v1 fair enough, v2 trained to fail.
gate_store = gate_fixtures.gate_store
gate_pipeline = gate_fixtures.gate_pipeline
gate_versions = gate_fixtures.gate_versions
gate_app = gate_fixtures.gate_app


def _actions(target: str) -> list[str]:
    return [e.action for e in reversed(audit.events(target=target))]


def test_the_gate_blocks_the_skewed_version_until_an_audited_override(
        gate_app: Any, tmp_path: Any, gate_versions: dict[str, Any]) -> None:
    with gate_app.app_context():
        record_deploy(tmp_path, "prod", "1", "job-prod-1")
    alice, bob = client_for(gate_app, "alice"), client_for(gate_app, "bob")
    created = alice.post("/api/v1/promotions", headers=csrf_headers(alice),
                         json={"version": "2", "reason": "higher AUC on the new sample"})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    # POST /promotions answers the gate: failed on the selection-rate ratio by sex.
    gate = body["gate"]
    assert gate["configured"] is True and gate["passed"] is False
    failed = [c for c in gate["checks"] if c["passed"] is False]
    assert [(c["name"], c["attribute"], c["value"]) for c in failed] == [
        ("min_selection_rate_ratio", "sex", 0.0)]
    assert gate["failures"] == ["selection-rate ratio by sex 0.000 < 0.6"]
    auc = next(c for c in gate["checks"] if c["name"] == "min_heldout_auc")
    assert auc["passed"] is True and auc["value"] >= GATE["min_heldout_auc"]
    # The evidence holds both reports: the candidate's and prod's (v1) beside it.
    evidence = body["evidence"]
    assert sex_ratio(evidence["candidate"]["fairness"]) == 0.0
    assert sex_ratio(evidence["current"]["fairness"]) == pytest.approx(
        sex_ratio(gate_versions["1"]))
    assert "bins" not in evidence["candidate"]["fairness"]["attributes"][0]["groups"][0][
        "calibration"]  # compact: rates, gaps and ratios, no chart data
    pid = body["id"]

    headers = csrf_headers(bob)
    refused = bob.post(f"/api/v1/promotions/{pid}/approve", headers=headers,
                       json={"comment": "looks fine"})
    assert refused.status_code == 422
    problem = refused.get_json()
    assert problem["errors"] == [{"field": "gate_override",
                                  "message": "required: the version fails the gate"}]
    assert "fails the promotion gate (selection-rate ratio by sex 0.000 < 0.6)" in \
        problem["detail"]
    blank = bob.post(f"/api/v1/promotions/{pid}/approve", headers=headers,
                     json={"gate_override": "   "})
    assert blank.status_code == 422
    with gate_app.app_context():
        assert promotions.get(pid).state == "PENDING"
        assert db.session.query(Job).count() == 0
        assert _actions(f"promotion:{pid}") == ["promotion.requested"]

    reason = "the sample over-represents defaults by women; approved for a two-week pilot"
    approved = bob.post(f"/api/v1/promotions/{pid}/approve", headers=headers,
                        json={"comment": "pilot", "gate_override": reason})
    assert approved.status_code == 200, approved.get_json()
    done = approved.get_json()
    assert (done["state"], done["gate_override"], done["comment"]) == (
        "APPROVED", reason, "pilot")
    with gate_app.app_context():
        job = db.session.get(Job, done["deploy_job_id"])
        assert job is not None and job.params == {"environment": "prod", "version": "2"}
        assert _actions(f"promotion:{pid}") == [
            "promotion.requested", "promotion.gate-overridden", "promotion.approved"]
        overridden = audit.events(action="promotion.gate-overridden")[0]
        assert overridden.actor == "bob"
        assert overridden.details == {"environment": "prod", "model_version": "2",
                                      "requested_by": "alice", "reason": reason,
                                      "failures": ["selection-rate ratio by sex 0.000 < 0.6"],
                                      "deploy_job_id": done["deploy_job_id"]}
        assert audit.events(action="promotion.approved")[0].details["gate_override"] == reason
        assert audit.verify().ok
    timeline = bob.get("/audit/timeline?environment=prod").get_data(as_text=True)
    steps = re.findall(r'data-action="([^"]+)"', timeline)
    assert steps[-3:] == ["promotion.requested", "promotion.gate-overridden",
                          "promotion.approved"]
    assert "promotion gate overridden</strong>" in timeline and reason in timeline


def test_a_passing_version_needs_no_override_and_takes_none(gate_app: Any) -> None:
    with gate_app.app_context():
        row = promotions.request("1", "prod", "first release", "alice",
                                 roles=frozenset({"MLOps.Engineer"}))
        assert promotions.to_dict(row)["gate"]["passed"] is True
        assert not promotions.gate_failed(row)
        bob = frozenset({"MLOps.Approver"})
        with pytest.raises(promotions.ValidationError, match="nothing to override"):
            promotions.approve(row.id, "bob", roles=bob, gate_override="just in case")
        done = promotions.approve(row.id, "bob", roles=bob)
        assert done.state == "APPROVED" and done.gate_override is None
        assert _actions(f"promotion:{row.id}") == ["promotion.requested",
                                                    "promotion.approved"]


def test_the_versions_api_answers_fairness_and_the_gate(gate_app: Any) -> None:
    carol = client_for(gate_app, "carol")
    response = carol.get("/api/v1/models/german-credit/versions")
    assert response.status_code == 200
    versions = {v["version"]: v for v in response.get_json()["versions"]}
    assert set(versions) == {"1", "2"}
    for version, passed in (("1", True), ("2", False)):
        block = versions[version]["fairness"]
        assert block["gate"]["passed"] is passed
        [sex] = block["report"]["attributes"]
        assert sex["name"] == "sex" and sex["column"] == "Sex"
        assert {g["group"] for g in sex["groups"]} == {"female", "male"}
        for group in sex["groups"]:
            for rate in ("selection_rate", "tpr", "fpr"):
                figure = group[rate]
                assert set(figure) >= {"value", "low", "high", "n", "meaningful"}
        assert block["report"]["method"] == "fairlearn MetricFrame"
    # A threshold change in the pipeline file applies at once to what the API shows.
    assert versions["2"]["fairness"]["gate"]["failures"] == [
        "selection-rate ratio by sex 0.000 < 0.6"]


def test_the_approval_page_marks_the_request_and_shows_both_reports(
        gate_app: Any, tmp_path: Any) -> None:
    with gate_app.app_context():
        record_deploy(tmp_path, "prod", "1", "job-prod-1")
        row = promotions.request("2", "prod", "new sample", "alice",
                                 roles=frozenset({"MLOps.Engineer"}))
    bob = client_for(gate_app, "bob")
    page = bob.get(f"/approvals/{row.id}").get_data(as_text=True)
    assert 'data-gate-badge="failed"' in page and 'data-gate="failed"' in page
    assert "selection-rate ratio by sex 0.000 &lt; 0.6" in page
    assert f'data-override="{row.id}"' in page
    summary = re.search(r'<table class="metrics fairness-summary" data-fairness-summary="sex">'
                        r'(.*?)</table>', page, re.S)
    assert summary is not None
    assert "<th class=\"num\">v2</th>" in summary.group(1)
    assert "<th class=\"num\">v1 (prod)</th>" in summary.group(1)
    assert "below 0.8" in summary.group(1)
    inbox = bob.get("/approvals/").get_data(as_text=True)
    assert f'data-pending="{row.id}"' in inbox and 'data-gate-badge="failed"' in inbox
    # Approving from the page without ticking the override box changes nothing.
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    form = {"csrf_token": token.group(1) if token else "", "comment": "ok",
            "gate_override": "a reason, but the box is not ticked"}
    response = bob.post(f"/approvals/{row.id}/approve", data=form)
    assert response.status_code == 302 and response.headers["Location"].endswith(
        f"/approvals/{row.id}")
    with gate_app.app_context():
        assert promotions.get(row.id).state == "PENDING"
    assert "approving it needs an explicit override" in bob.get(
        f"/approvals/{row.id}").get_data(as_text=True)
    response = bob.post(f"/approvals/{row.id}/approve",
                        data={**form, "gate_override_confirm": "1",
                              "gate_override": "pilot with manual review of refusals"})
    assert response.status_code == 302 and "/jobs/" in response.headers["Location"]
    with gate_app.app_context():
        decided = db.session.get(Promotion, row.id)
        assert decided is not None and decided.gate_override == \
            "pilot with manual review of refusals"
    page = bob.get(f"/approvals/{row.id}").get_data(as_text=True)
    assert 'data-field="gate_override">pilot with manual review of refusals' in page


def test_the_version_page_and_the_model_card(gate_app: Any, tmp_path: Any) -> None:
    with gate_app.app_context():
        record_deploy(tmp_path, "staging", "2", "job-staging-2")
    erin = client_for(gate_app, "erin")  # any signed-in user reads the registry
    page = erin.get("/models/german-credit/versions/2").get_data(as_text=True)
    assert 'data-chart="fairness-rates"' in page and 'data-chart="fairness-calibration"' in page
    assert 'data-gate="failed"' in page and 'class="four-fifths"' in page
    card = erin.get("/models/german-credit/versions/2/card")
    assert card.status_code == 200
    html = card.get_data(as_text=True)
    for section in ("card-use", "card-data", "card-metrics", "card-decision", "card-fairness",
                    "card-reasons", "card-limitations", "card-approvals", "card-served"):
        assert f'id="{section}"' in html, section
    assert "TreeSHAP" in html and 'data-served="staging"' in html
    download = erin.get("/models/german-credit/versions/2/card.md")
    assert download.status_code == 200
    assert download.mimetype == "text/markdown"
    assert download.headers["Content-Disposition"] == \
        'attachment; filename="german-credit-v2-model-card.md"'
    text = download.get_data(as_text=True)
    info = erin.get("/api/v1/models/german-credit/versions").get_json()["versions"]
    dataset_sha = next(v for v in info if v["version"] == "2")["lineage"]["dataset"]["sha256"]
    assert f"SHA-256: `{dataset_sha}`" in text
    for heading in ("# Model card: german-credit v2", "## Intended use", "## Data",
                    "## Metrics", "## Decision rule and costs", "## Fairness report",
                    "### By sex (Sex)", "## Reason codes", "## Limitations", "## Approvals",
                    "## Where it served"):
        assert f"\n{heading}\n" in f"\n{text}", heading
    assert "- fail: selection-rate ratio by sex 0.000 < 0.6" in text
    assert "| staging |" in text


def test_evaluate_gate_judges_missing_and_small_figures() -> None:
    settings = GateSettings(min_heldout_auc=0.75, min_selection_rate_ratio=0.8,
                            max_equalized_odds_gap=0.1)
    # A version trained before reports existed cannot show it meets a fairness threshold.
    legacy = evaluate_gate(settings, 0.8, None)
    assert not legacy.passed and len(legacy.failures) == 2
    assert all("no fairness report" in f for f in legacy.failures)
    small = {"min_group_size": 30, "attributes": [{"name": "age", "summary": {
        "selection_rate": {"ratio": None, "meaningful": False},
        "equalized_odds_gap": {"value": 0.5, "meaningful": True}}}]}
    result = evaluate_gate(settings, None, small)
    by_name = {c.name: c for c in result.checks}
    assert by_name["min_selection_rate_ratio"].passed is None  # not judged, not failed
    assert "fewer than two groups with at least 30" in by_name[
        "min_selection_rate_ratio"].detail
    assert by_name["max_equalized_odds_gap"].passed is False
    assert by_name["min_heldout_auc"].passed is False  # not recorded
    assert evaluate_gate(GateSettings(), 0.5, None).to_dict() == {
        "configured": False, "passed": True, "failures": [], "checks": []}


def test_ci_hears_that_its_request_fails_the_gate(
        tmp_path: Any, sqlite_url: str, redis_server: Any,
        gate_versions: dict[str, Any]) -> None:
    """`modelgate pipeline run --environment prod` says so when the version fails the gate."""
    import os
    import subprocess
    import sys
    import threading

    from werkzeug.serving import make_server

    from tests.conftest import build_app
    from tests.identity_support import start_issuer
    from tests.support import ROOT

    with start_issuer(tmp_path / "issuer") as issuer:
        panel = build_app(tmp_path, sqlite_url, redis_server.url, ISSUER_URL=issuer.url,
                          CA_BUNDLE=str(issuer.ca),
                          CLIENT_SECRET=issuer.secret("modelgate-panel"))
        server = make_server("127.0.0.1", 0, panel, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
            env.update(MODELGATE_HOME=str(tmp_path / "ci-home"),
                       MODELGATE_PANEL_URL=f"http://127.0.0.1:{server.server_port}",
                       MODELGATE_ISSUER_URL=issuer.url, MODELGATE_CA_BUNDLE=str(issuer.ca),
                       MODELGATE_CI_CLIENT_ID="modelgate-ci",
                       MODELGATE_CI_CLIENT_SECRET=issuer.secret("modelgate-ci"))
            (tmp_path / "ci-home").mkdir()
            done = subprocess.run(
                [sys.executable, "-m", "app", "pipeline", "run", "--environment", "prod",
                 "--version", "2", "--reason", "CI run 7"], env=env, cwd=str(ROOT),
                capture_output=True, text=True, timeout=120, check=False)
        finally:
            server.shutdown()
            thread.join(timeout=10)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "promotion" in done.stdout and "requested (v2 → prod)" in done.stdout
    assert ("v2 fails the promotion gate (selection-rate ratio by sex 0.000 < 0.6): "
            "approving it needs an override with a reason") in done.stderr
