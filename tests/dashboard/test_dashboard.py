"""Dashboard and job detail by role: stages, run buttons, environment cards, retry, landing."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import USERS, build_app, csrf_headers, sign_in

RUN_FORM = re.compile(r'<form method="post" action="/jobs/"')


@pytest.fixture
def app(tmp_path: Path, redis_server: Any, sqlite_url: str) -> Any:
    return build_app(tmp_path, sqlite_url, redis_server.url, SSE_MAX_SECONDS=0.1)


def add_job(app: Any, kind: str, status: str, *, result: dict[str, Any] | None = None,
            params: dict[str, Any] | None = None, parent_id: str | None = None,
            by: str = "alice", minutes_ago: int = 0) -> str:
    """A job row as a worker would have left it."""
    from app.db import Job, utcnow
    from app.extensions import db

    with app.app_context():
        when = utcnow() - dt.timedelta(minutes=minutes_ago)
        job = Job(kind=kind, status=status, params=params or {}, requested_by=by,
                  result=result, parent_id=parent_id, created_at=when, updated_at=when,
                  started_at=when, finished_at=when if status != "RUNNING" else None,
                  progress=100 if status == "SUCCEEDED" else 40,
                  step="done" if status == "SUCCEEDED" else "working")
        db.session.add(job)
        db.session.commit()
        return str(job.id)


def test_engineers_get_run_buttons_and_everyone_else_reads(app: Any) -> None:
    client = app.test_client()
    for user, forms in (("alice", 8), ("dave", 8), ("bob", 0), ("carol", 0), ("erin", 0)):
        sign_in(client, user)
        html = client.get("/").get_data(as_text=True)
        assert len(RUN_FORM.findall(html)) == forms, user
        # a Plan button beside Provision, Deploy and Publish, for engineers only
        assert html.count('data-run="plan"') == (3 if forms else 0), user
        assert html.count('class="stage stage-not_run"') == 4, user
        assert "Nothing is deployed to staging yet." in html
        assert "style=" not in html


def test_a_forged_job_post_from_a_tester_is_refused(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "carol")
    for kind in ("pipeline", "provision", "train", "deploy", "publish"):
        response = client.post("/jobs/", data={"kind": kind, "next": "/"},
                               headers=csrf_headers(client))
        assert response.status_code == 403, kind
        assert "MLOps.Engineer" in response.get_data(as_text=True)
    sign_in(client, "alice")
    assert client.get("/dashboard/state").get_json()["jobs"] == []


def test_a_run_button_queues_the_job_and_stays_on_the_dashboard(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "alice")
    response = client.post("/jobs/", data={"kind": "deploy", "next": "/",
                                           "params": '{"environment": "staging"}'},
                           headers=csrf_headers(client))
    assert response.status_code == 302 and response.headers["Location"] == "/"
    state = client.get("/dashboard/state").get_json()
    deploy = next(s for s in state["stages"] if s["key"] == "deployment")
    assert deploy["status"] == "QUEUED" and deploy["job"]["requested_by"] == "alice"
    assert deploy["job"]["params"] == {"environment": "staging"}
    off_site = client.post("/jobs/", data={"kind": "provision", "next": "https://evil.example"},
                           headers=csrf_headers(client))
    assert off_site.headers["Location"] == "/"  # no open redirect


def test_stages_show_the_newest_job_of_each_kind_with_what_it_produced(app: Any) -> None:
    add_job(app, "train", "FAILED", minutes_ago=10)
    add_job(app, "train", "SUCCEEDED", by="dave", minutes_ago=5,
            result={"model": {"name": "german-credit", "version": "7"}})
    add_job(app, "publish", "FAILED", minutes_ago=1)
    client = app.test_client()
    sign_in(client, "erin")
    stages = {s["key"]: s for s in client.get("/dashboard/state").get_json()["stages"]}
    assert stages["model"]["status"] == "SUCCEEDED"
    assert stages["model"]["summary"] == "german-credit version 7"
    assert stages["model"]["job"]["requested_by"] == "dave"
    assert stages["api"]["status"] == "FAILED"
    assert stages["infrastructure"]["status"] == "NOT_RUN"
    html = client.get("/").get_data(as_text=True)
    assert 'data-stage="model" data-kind="train"\n        data-status="SUCCEEDED"' in html
    assert "german-credit version 7" in html
    assert ">Not run</span>" in html and ">Succeeded</span>" in html and "NOT_RUN<" not in html


def test_pipeline_detail_shows_its_stages_and_links_to_what_they_produced(app: Any) -> None:
    parent = add_job(app, "pipeline", "SUCCEEDED", minutes_ago=3,
                     result={"environment": "staging", "until": "publish", "stages": []})
    add_job(app, "provision", "SUCCEEDED", parent_id=parent, minutes_ago=3,
            result={"workspace": "w", "backend": "local"})
    add_job(app, "train", "SUCCEEDED", parent_id=parent, minutes_ago=2,
            result={"model": {"name": "german-credit", "version": "4"}})
    add_job(app, "deploy", "SUCCEEDED", parent_id=parent, minutes_ago=1,
            result={"environment": "staging", "slot": "green", "deployment_id": "d1",
                    "model": {"name": "german-credit", "version": "4"}})
    add_job(app, "publish", "SUCCEEDED", parent_id=parent,
            result={"api": "credit-risk-staging", "revision": 2, "environment": "staging"})
    client = app.test_client()
    sign_in(client, "carol")
    html = client.get(f"/jobs/{parent}").get_data(as_text=True)
    assert html.count('data-status="SUCCEEDED"') == 4
    assert 'href="/models/german-credit/versions/4"' in html
    assert "#env-staging" in html and "green slot of staging" in html
    assert 'href="/apis/#api-credit-risk-staging"' in html
    assert "data-retry-form" not in html  # a tester may not run jobs
    status = client.get(f"/jobs/{parent}/status").get_json()
    assert {c["kind"] for c in status["children"]} == {"provision", "train", "deploy", "publish"}


def test_retry_resubmits_the_same_kind_and_parameters_for_engineers_only(app: Any) -> None:
    failed = add_job(app, "deploy", "FAILED", params={"environment": "staging", "version": "2"})
    running = add_job(app, "train", "RUNNING")
    client = app.test_client()
    sign_in(client, "carol")
    assert client.post(f"/jobs/{failed}/retry", headers=csrf_headers(client)).status_code == 403
    sign_in(client, "alice")
    assert "data-retry-form" in client.get(f"/jobs/{failed}").get_data(as_text=True)
    response = client.post(f"/jobs/{failed}/retry", headers=csrf_headers(client))
    assert response.status_code == 302
    new_id = response.headers["Location"].rsplit("/", 1)[1]
    new = client.get(f"/jobs/{new_id}/status").get_json()["job"]
    assert (new["kind"], new["params"], new["status"]) == (
        "deploy", {"environment": "staging", "version": "2"}, "QUEUED")
    assert new["requested_by"] == "alice"
    assert client.post(f"/jobs/{running}/retry", headers=csrf_headers(client)).status_code == 409


def test_environment_cards_show_deployment_api_and_traffic(app: Any, tmp_path: Path) -> None:
    from app.services import apis, deployments

    package = tmp_path / "models" / "german-credit" / "2"
    package.mkdir(parents=True)
    (package / "metrics.json").write_text(json.dumps(
        {"family": "logistic_regression", "threshold": 0.31,
         "cost_matrix": {"bad_as_good": 5.0, "good_as_bad": 1.0},
         "heldout": {"roc_auc": 0.781, "accuracy": 0.7, "expected_cost": 0.55,
                     "expected_cost_at_0_5": 0.71},
         "cv": {"roc_auc_mean": 0.77}}))
    with app.app_context():
        row = deployments.create_slot(environment="prod", model_name="german-credit",
                                      model_version="2", replicas=2, resources={},
                                      job_id="job-d")
        deployments.activate(row.id)
        from app.db import ApiRevision
        from app.extensions import db

        db.session.add(ApiRevision(api_name=apis.api_name("prod"), path="credit-risk",
                                   environment="prod", revision=3, policy_xml="<policies/>",
                                   created_by="alice", is_current=True))
        db.session.commit()
    now = dt.datetime.now(dt.UTC)
    log = tmp_path / "logs" / "gateway-requests.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    lines = [{"time": (now - dt.timedelta(seconds=s)).isoformat(), "api": "credit-risk",
              "status": 500 if s == 30 else 200, "latency_ms": 5.0 + s / 10,
              "revision": 3, "environment": "prod"} for s in range(0, 120, 10)]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    client = app.test_client()
    sign_in(client, "bob")
    html = client.get("/dashboard/environments").get_data(as_text=True)
    prod = html[html.index('id="env-prod"'):]
    assert "german-credit v2" in prod and "0.781" in prod and "0.310" in prod
    assert "credit-risk r3" in prod
    # Accuracy never stands alone: the rule and the cost it minimises come first.
    assert 'data-field="decision-rule">“bad” when P(bad) ≥ 0.310' in prod
    assert 'data-field="expected-cost">0.550' in prod and "(at 0.5: 0.710)" in prod
    assert "accepting a bad applicant costs 5, declining a good one 1" in prod
    assert prod.index("decision-rule") < prod.index('data-field="accuracy"')
    assert 'data-field="traffic">100 %' in prod and "under an hour ago" in prod
    assert "8.3 %" in prod  # one 5xx in twelve calls
    assert prod.count('<svg class="chart spark"') == 2
    assert "<rect" in prod and "<polyline" in prod


@pytest.mark.parametrize("user,landing", [("alice", "/"), ("dave", "/"), ("bob", "/approvals/"),
                                          ("carol", "/score/"), ("erin", "/")])
def test_each_role_lands_where_its_work_is(app: Any, user: str, landing: str) -> None:
    from app.auth.landing import landing_page
    from app.auth.users import User

    with app.test_request_context():
        person = User(id=user, name=user, username=user, roles=frozenset(USERS[user]))
        assert landing_page(person) == landing


def test_traffic_reads_only_new_log_lines_and_survives_rotation(app: Any,
                                                                tmp_path: Path) -> None:
    from app.services import traffic as figures

    log = tmp_path / "logs" / "gateway-requests.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def call(seconds_ago: int, status: int = 200, api: str = "credit-risk") -> str:
        return json.dumps({"time": (now - dt.timedelta(seconds=seconds_ago)).isoformat(),
                           "api": api, "status": status, "latency_ms": 4.0}) + "\n"

    with app.app_context():
        log.write_text(call(3600) + call(60) + call(50))  # one call outside the window
        traffic, series = figures.per_minute(now=now)
        assert traffic["credit-risk"].calls == 2
        with log.open("a") as out:
            out.write(call(10, 502) + '{"time": "half a li')  # a line still being written
        traffic, _ = figures.per_minute(now=now)
        assert (traffic["credit-risk"].calls, traffic["credit-risk"].errors) == (3, 1)
        with log.open("a") as out:
            out.write('ne"}\n' + call(5, api="credit-risk-staging"))
        traffic, series = figures.per_minute(now=now)
        assert traffic["credit-risk"].calls == 3 and traffic["credit-risk-staging"].calls == 1
        assert sum(p.calls for p in series["credit-risk"]) == 3
        log.unlink()
        log.write_text(call(1))  # rotated: a new file
        traffic, _ = figures.per_minute(now=now)
        assert list(traffic) == ["credit-risk"] and traffic["credit-risk"].calls == 1


def test_a_user_without_a_role_is_told_what_she_sees_and_how_to_get_a_role(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "erin")
    page = client.get("/").get_data(as_text=True)
    assert 'id="no-role"' in page and "You are signed in without a role" in page
    for role in ("MLOps.Engineer", "MLOps.Approver", "Score.Invoke", "MLOps.Admin"):
        assert f"<code>{role}</code>" in page
    assert "within 5 minutes" in page
    banner = page[page.index('id="no-role"'):page.index("</section>")]
    links = re.findall(r'href="([^"]+)"', banner)
    assert len(links) == 6
    for link in links:  # every page it offers opens for her
        assert client.get(link, follow_redirects=True).status_code == 200, link
    for user in ("alice", "bob", "carol"):
        other = app.test_client()
        sign_in(other, user)
        assert 'id="no-role"' not in other.get("/").get_data(as_text=True)
