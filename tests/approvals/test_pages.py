"""REST API and pages of approvals and audit, by role (CSRF on, real Redis, SQLite)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app.extensions import db
from app.services import audit
from tests.approvals.conftest import client_for, record_deploy
from tests.conftest import build_app, csrf_headers
from tests.support import RedisServer


@pytest.fixture
def panel(tmp_path: Path, sqlite_url: str, redis_server: RedisServer,
          registered_versions: dict[str, Any]) -> Iterator[Any]:
    # No app context held here: requests must each get their own (g caches the CSRF token).
    yield build_app(tmp_path, sqlite_url, redis_server.url, WTF_CSRF_ENABLED=True)


def _api(panel: Any, user: str) -> tuple[Any, dict[str, str]]:
    client = client_for(panel, user)
    return client, csrf_headers(client)


def _form_token(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match
    return match.group(1)


def test_api_four_eyes_flow_and_error_codes(panel: Any) -> None:
    alice, a_headers = _api(panel, "alice")
    bob, b_headers = _api(panel, "bob")
    carol, c_headers = _api(panel, "carol")
    assert alice.post("/api/v1/promotions", json={"version": "2", "reason": "x"}).status_code \
        == 400  # session write without the CSRF header
    created = alice.post("/api/v1/promotions", headers=a_headers,
                         json={"version": "2", "environment": "prod", "reason": "AUC +0.04"})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["state"] == "PENDING" and body["model"]["version"] == "2"
    pid = body["id"]
    assert created.headers["Location"] == f"/api/v1/promotions/{pid}"
    assert carol.post("/api/v1/promotions", headers=c_headers,
                      json={"version": "2", "reason": "x"}).status_code == 403
    bad = alice.post("/api/v1/promotions", headers=a_headers, json={"version": "99", "reason": "x"})
    assert bad.status_code == 422 and bad.get_json()["errors"][0]["field"] == "version"
    assert alice.post("/api/v1/promotions", headers=a_headers,
                      json={"version": "2"}).status_code == 422
    # The requester (role missing) and a tester cannot decide.
    assert alice.post(f"/api/v1/promotions/{pid}/approve", headers=a_headers,
                      json={}).status_code == 403
    assert carol.post(f"/api/v1/promotions/{pid}/reject", headers=c_headers,
                      json={}).status_code == 403
    approved = bob.post(f"/api/v1/promotions/{pid}/approve", headers=b_headers,
                        json={"comment": "ship it"})
    assert approved.status_code == 200, approved.get_json()
    assert approved.get_json()["state"] == "APPROVED" and approved.get_json()["deploy_job_id"]
    job = bob.get(f"/api/v1/jobs/{approved.get_json()['deploy_job_id']}").get_json()
    assert job["kind"] == "deploy" and job["params"] == {"environment": "prod", "version": "2"}
    again = bob.post(f"/api/v1/promotions/{pid}/reject", headers=b_headers, json={})
    assert again.status_code == 409
    assert again.headers["Content-Type"].startswith("application/problem+json")
    listed = carol.get("/api/v1/promotions").get_json()["promotions"]
    assert [p["id"] for p in listed] == [pid]
    assert carol.get(f"/api/v1/promotions/{pid}").get_json()["decided_by"] == "bob"
    assert bob.get("/api/v1/promotions/nope").status_code == 404
    paths = carol.get("/api/v1/openapi.json").get_json()["paths"]
    assert {"/promotions", "/promotions/{promotion_id}/approve",
            "/promotions/{promotion_id}/reject"} <= set(paths)


def test_self_approval_through_the_api_is_403(panel: Any) -> None:
    dave, headers = _api(panel, "dave")
    pid = dave.post("/api/v1/promotions", headers=headers,
                    json={"version": "3", "reason": "admin alone"}).get_json()["id"]
    refused = dave.post(f"/api/v1/promotions/{pid}/approve", headers=headers, json={})
    assert refused.status_code == 403 and "someone else" in refused.get_json()["detail"]


def test_inbox_shows_everything_to_decide_and_forms_work(
        panel: Any, tmp_path: Path, registered_versions: dict[str, Any]) -> None:
    v3, v1 = registered_versions["3"]["roc_auc"], registered_versions["1"]["roc_auc"]
    with panel.app_context():
        record_deploy(tmp_path, "prod", "1", "job-prod-1")
    alice, headers = _api(panel, "alice")
    pid = alice.post("/api/v1/promotions", headers=headers,
                     json={"version": "3", "reason": "better recall"}).get_json()["id"]
    bob = client_for(panel, "bob")
    page = bob.get("/approvals/").get_data(as_text=True)
    assert f'data-pending="{pid}"' in page and f'data-approve="{pid}"' in page
    assert 'id="approvals-badge"' in page and ">1</span>" in page
    assert "better recall" in page and "alice" in page
    assert "v3 (prod)" not in page and "v1 (prod)" in page  # metrics side by side vs prod v1
    # The ROC AUC row: v3's and prod v1's values as MLflow has them, and the difference.
    cells = [re.escape(f'<td class="num">{value}</td>')
             for value in (f"{v3:.4f}", f"{v1:.4f}", f"{v3 - v1:+.4f}")]
    roc_row = r'<tr data-metric="roc_auc"><td>ROC AUC \(held-out\)</td>{}{}\s*{}</tr>'.format(
        *cells)
    assert re.search(roc_row, page), roc_row
    assert "style=" not in page and "<script>" not in page
    # The requester sees the request without decision buttons.
    own = alice.get("/approvals/").get_data(as_text=True)
    assert f'data-pending="{pid}"' in own and f'data-approve="{pid}"' not in own
    assert 'id="approvals-badge"' not in own  # the badge is for deciders
    assert pid in alice.get("/approvals/mine").get_data(as_text=True)
    # Approve through the form (CSRF) → the deploy job page.
    token = _form_token(page)
    assert bob.post(f"/approvals/{pid}/approve", data={"comment": "ok"}).status_code == 400
    done = bob.post(f"/approvals/{pid}/approve", data={"comment": "ok", "csrf_token": token})
    assert done.status_code == 302 and "/jobs/" in done.headers["Location"]
    detail = bob.get(f"/approvals/{pid}").get_data(as_text=True)
    assert 'data-state="APPROVED"' in detail and "ok" in detail


def test_the_approval_page_labels_metrics_and_states_as_the_model_page_does(
        panel: Any, tmp_path: Path) -> None:
    with panel.app_context():
        record_deploy(tmp_path, "prod", "1", "job-prod-1")
    alice, headers = _api(panel, "alice")
    pid = alice.post("/api/v1/promotions", headers=headers,
                     json={"version": "3", "reason": "r"}).get_json()["id"]
    page = client_for(panel, "bob").get(f"/approvals/{pid}").get_data(as_text=True)
    shown = re.sub(r"<[^>]+>", " ", page)  # the text, without attributes
    for raw in ("cv_expected_cost", "logistic_regression.heldout_roc_auc", "roc_auc",
                "PENDING"):
        assert raw not in shown, raw
    for label in ("Expected cost (cross-validated)", "ROC AUC (held-out)",
                  "Logistic regression: ROC AUC (held-out)", "Pending"):
        assert label in shown, label
    # The table leads with the metrics the model page shows, in its order.
    keys = re.findall(r'<tr data-metric="([^"]+)">', page)
    assert keys[:3] == ["roc_auc", "cv_roc_auc", "accuracy"], keys


def test_pages_by_role(panel: Any) -> None:
    alice, headers = _api(panel, "alice")
    pid = alice.post("/api/v1/promotions", headers=headers,
                     json={"version": "2", "reason": "r"}).get_json()["id"]
    expected = {
        "alice": {"/approvals/": 200, "/approvals/new": 200, "/audit/": 403,
                  "/audit/timeline": 200, f"/approvals/{pid}": 200},
        "bob": {"/approvals/": 200, "/approvals/new": 403, "/audit/": 200,
                "/audit/timeline": 200, "/audit/export.csv": 200},
        "carol": {"/approvals/": 200, "/approvals/new": 403, "/audit/": 403,
                  "/audit/export.jsonl": 403, "/audit/timeline": 200},
        "dave": {"/approvals/new": 200, "/audit/": 200, "/audit/export.jsonl": 200},
        "erin": {"/approvals/mine": 200, "/audit/timeline?environment=prod": 200},
    }
    for user, pages in expected.items():
        client = client_for(panel, user)
        for path, status in pages.items():
            assert client.get(path).status_code == status, (user, path)
    new = alice.get("/approvals/new").get_data(as_text=True)
    assert '<option value="3"' in new and 'id="no-rollback"' in new
    carol = client_for(panel, "carol")
    token = _form_token(carol.get("/approvals/").get_data(as_text=True))
    assert carol.post(f"/approvals/{pid}/approve",
                      data={"csrf_token": token}).status_code == 403
    assert carol.post("/approvals/rollback", data={"csrf_token": token,
                                                   "reason": "x"}).status_code == 403
    assert client_for(panel, "erin").get("/audit/verify").status_code == 405


def test_audit_page_verify_button_and_exports(panel: Any) -> None:
    with panel.app_context():
        for i in range(3):
            audit.record("alice", audit.AuditAction.JOB_QUEUED, f"job:{i}", {"i": i})
    bob = client_for(panel, "bob")
    page = bob.get("/audit/?actor=alice").get_data(as_text=True)
    assert page.count('data-action="job.queued"') == 3
    token = _form_token(page)
    ok = bob.post("/audit/verify", data={"csrf_token": token}).get_data(as_text=True)
    assert 'data-ok="true"' in ok
    with panel.app_context():
        db.session.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE id = 2"))
        db.session.commit()
    broken = bob.post("/audit/verify", data={"csrf_token": token}).get_data(as_text=True)
    assert 'data-broken="2"' in broken and "row 2" in broken
    jsonl = bob.get("/audit/export.jsonl")
    assert "attachment" in jsonl.headers["Content-Disposition"]
    assert [json.loads(line)["id"] for line in jsonl.get_data(as_text=True).splitlines()] \
        == [1, 2, 3]
    csv_text = bob.get("/audit/export.csv").get_data(as_text=True)
    assert csv_text.splitlines()[0].startswith("id,time,actor")


def test_rollback_by_engineer_queues_a_deploy_of_an_earlier_version(panel: Any,
                                                                     tmp_path: Path) -> None:
    with panel.app_context():
        record_deploy(tmp_path, "prod", "1", "job-1")
        record_deploy(tmp_path, "prod", "2", "job-2")
    alice = client_for(panel, "alice")
    page = alice.get("/approvals/new").get_data(as_text=True)
    assert 'id="prod-version">v2' in page and '<option value="1">v1 (previous)' in page
    token = _form_token(page)
    assert alice.post("/approvals/rollback", data={"csrf_token": token, "version": "1",
                                                   "reason": ""}).status_code == 422
    assert alice.post("/approvals/rollback", data={"csrf_token": token, "version": "2",
                                                   "reason": "x"}).status_code == 422
    done = alice.post("/approvals/rollback", data={"csrf_token": token,
                                                   "reason": "v2 misclassifies"})
    assert done.status_code == 302
    job_id = done.headers["Location"].rstrip("/").rsplit("/", 1)[1]
    job = alice.get(f"/api/v1/jobs/{job_id}").get_json()
    assert job["params"] == {"environment": "prod", "version": "1"}
    with panel.app_context():
        event = audit.events(action="deployment.rolled-back")[0]
    assert event.actor == "alice" and event.target == "environment:prod"
    assert event.details["from_version"] == "2" and event.details["model_version"] == "1"
    assert event.details["reason"] == "v2 misclassifies"


def test_deployments_page_rollback_is_the_same_audited_path(panel: Any, tmp_path: Path) -> None:
    """The Deployments page's button asks for a reason and queues the same explicit deploy."""
    with panel.app_context():
        record_deploy(tmp_path, "prod", "1", "job-1")
        record_deploy(tmp_path, "prod", "2", "job-2")
    alice = client_for(panel, "alice")
    page = alice.get("/deployments/").get_data(as_text=True)
    assert 'name="reason"' in page and "Roll back to v1" in page
    token = _form_token(page)
    refused = alice.post("/deployments/prod/rollback",
                         data={"csrf_token": token, "version": "1", "reason": " "})
    assert refused.status_code == 422 and "say why you roll back" in refused.get_data(as_text=True)
    too_long = alice.post("/deployments/prod/rollback",
                          data={"csrf_token": token, "version": "1", "reason": "x" * 2001})
    assert too_long.status_code == 422 and "at most 2000 characters" in too_long.get_data(
        as_text=True)
    done = alice.post("/deployments/prod/rollback", data={
        "csrf_token": token, "version": "1", "reason": "  latency regression\n"})
    assert done.status_code == 302
    job_id = done.headers["Location"].rstrip("/").rsplit("/", 1)[1]
    assert alice.get(f"/api/v1/jobs/{job_id}").get_json()["params"] == {
        "environment": "prod", "version": "1"}
    with panel.app_context():
        event = audit.events(action="deployment.rolled-back")[0]
    assert event.details["reason"] == "latency regression" and event.actor == "alice"
    carol = client_for(panel, "carol")
    assert carol.post("/deployments/prod/rollback",
                      data={"csrf_token": _form_token(carol.get("/").get_data(as_text=True)),
                            "reason": "x"}).status_code == 403


def test_lineage_reaches_the_deployments_of_a_version(panel: Any, tmp_path: Path) -> None:
    """dataset → run → model version → deployments: the last link comes from the deploy records."""
    with panel.app_context():
        slot = record_deploy(tmp_path, "prod", "2", "job-2")
    alice = client_for(panel, "alice")
    versions = alice.get("/api/v1/models/german-credit/versions").get_json()["versions"]
    by_version = {v["version"]: v["lineage"]["deployments"] for v in versions}
    assert [(d["id"], d["environment"], d["job_id"]) for d in by_version["2"]] == [
        (slot, "prod", "job-2")]
    assert by_version["1"] == [] and by_version["3"] == []
    page = alice.get("/models/german-credit/versions/2").get_data(as_text=True)
    assert f'data-deployment="{slot}"' in page and "not deployed yet" not in page


def test_timeline_filters_offer_only_real_environments_and_versions(panel: Any) -> None:
    erin = client_for(panel, "erin")
    page = erin.get("/audit/timeline").get_data(as_text=True)
    assert '<select name="environment" id="timeline-environment">' in page
    assert '<option value="prod">prod</option>' in page and '<option value="3">v3</option>' in page
    assert 'type="text" name="environment"' not in page
    # Nothing recorded yet: a sentence, not a numbered list item.
    assert 'id="timeline-empty"' in page and '<ol class="timeline"' not in page
    nonsense = erin.get("/audit/timeline?environment=nonsense&model_version=99")
    text = nonsense.get_data(as_text=True)
    assert nonsense.status_code == 200 and "Timeline of nonsense" not in text
    assert 'data-error="environment">no environment is called &#39;nonsense&#39;' in text
    assert 'data-error="model_version">no version &#39;99&#39; is registered' in text


def test_audit_details_read_as_fields_and_the_time_does_not_wrap(panel: Any) -> None:
    with panel.app_context():
        audit.record("alice", audit.AuditAction.JOB_QUEUED, "job:1",
                     {"kind": "deploy", "params": {"environment": "staging", "version": "2"}})
    page = client_for(panel, "bob").get("/audit/").get_data(as_text=True)
    row = page[page.index('data-action="job.queued"'):]
    row = row[:row.index("</tr>")]
    assert '<td class="nowrap"><time' in row
    assert "{&#34;" not in row and '{"' not in row  # no raw JSON
    assert "<dt>kind</dt><dd>deploy</dd>" in row
    assert "<dt>params</dt><dd>environment staging, version 2</dd>" in row


def test_the_deploy_form_offers_registered_versions_and_answers_beside_the_field(
        panel: Any) -> None:
    from app.services import jobs

    alice = client_for(panel, "alice")
    page = alice.get("/deployments/").get_data(as_text=True)
    staging = page[page.index('id="env-staging"'):page.index('id="env-prod"')]
    assert '<select name="version" id="deploy-version-staging"' in staging
    assert '<option value="">latest (v3)</option>' in staging
    assert all(f'<option value="{v}">v{v}</option>' in staging for v in "123")
    assert '<input name="version"' not in page
    token = _form_token(page)
    for bad, message in (("abc", "&#39;abc&#39; is not a version number"),
                         ("99", "no version 99 is registered")):
        answer = alice.post("/deployments/staging/deploy",
                            data={"csrf_token": token, "version": bad})
        html = answer.get_data(as_text=True)
        assert answer.status_code == 422, bad
        assert 'data-environment="staging"' in html and 'data-action="deploy"' in html
        assert f'data-error="version" role="alert">{message}</span>' in html, bad
        assert "field-invalid" in html
    with panel.app_context():
        assert jobs.list_jobs(limit=10) == []  # nothing was queued
    done = alice.post("/deployments/staging/deploy", data={"csrf_token": token, "version": "2"})
    assert done.status_code == 302 and "/jobs/" in done.headers["Location"]


def test_a_refused_promotion_request_answers_beside_the_field(panel: Any,
                                                              tmp_path: Path) -> None:
    with panel.app_context():
        record_deploy(tmp_path, "prod", "3", "job-prod-3")
    alice = client_for(panel, "alice")
    token = _form_token(alice.get("/approvals/new").get_data(as_text=True))
    served = alice.post("/approvals/", data={"csrf_token": token, "environment": "prod",
                                             "version": "3", "reason": "again"})
    html = served.get_data(as_text=True)
    assert served.status_code == 422 and 'id="promotion-form"' in html
    assert 'data-error="version" role="alert">prod already serves v3</span>' in html
    assert ">again</textarea>" in html  # the reason typed is kept
    blank = alice.post("/approvals/", data={"csrf_token": token, "environment": "prod",
                                            "version": "2", "reason": " "})
    html = blank.get_data(as_text=True)
    assert blank.status_code == 422
    assert 'data-error="reason" role="alert">say why this change should go to production' \
        in html
    assert '<option value="2" selected>' in html
