"""Protected environments: every direct change of prod is refused at submit, for every role and
surface (panel forms, REST with session or the CI client's real bearer token); only the approved
promotion's job and the engineer's break-glass rollback get through, and the worker re-checks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msal
import pytest

from app.db import ApiRevision, Job
from app.extensions import db
from app.services import audit, promotions, protected, rollbacks
from app.services.kinds import JobKind
from tests.approvals.conftest import record_deploy
from tests.conftest import USERS, build_app, sign_in
from tests.identity_support import Issuer, start_issuer
from tests.support import ROOT, RedisServer, wait_for

ENGINEER_APPROVER = ["MLOps.Engineer", "MLOps.Approver", "Score.Invoke"]
PRINCIPALS = {"alice": USERS["alice"], "dave": USERS["dave"], "frank": ENGINEER_APPROVER,
              "bob": USERS["bob"]}


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    """The real local issuer, whose credentials add `release-bot`: a confidential client
    holding both MLOps.Engineer and MLOps.Approver."""
    from app.identity.credentials import default_credentials

    home = tmp_path_factory.mktemp("protected-issuer")
    document = default_credentials()
    document["clients"]["release-bot"] = {"secret": "r" * 32,
                                          "roles": ENGINEER_APPROVER}
    (home / "dev-credentials.json").write_text(json.dumps(document))
    (home / "dev-credentials.json").chmod(0o600)
    with start_issuer(home) as running:
        yield running


def _client_token(issuer: Issuer, client_id: str) -> str:
    app = msal.ConfidentialClientApplication(
        client_id, client_credential=issuer.secret(client_id),
        oidc_authority=issuer.url, http_client=issuer.session())
    token: str = app.acquire_token_for_client(["api://modelgate/.default"])["access_token"]
    issuer.remember(token)
    return token


@pytest.fixture(scope="module")
def ci_token(issuer: Issuer) -> str:
    """A real client-credentials token of modelgate-ci (MLOps.Engineer + Score.Invoke)."""
    return _client_token(issuer, "modelgate-ci")


@pytest.fixture(scope="module")
def bot_token(issuer: Issuer) -> str:
    """A real token of release-bot (MLOps.Engineer + MLOps.Approver)."""
    return _client_token(issuer, "release-bot")


@pytest.fixture
def panel(tmp_path: Path, sqlite_url: str, redis_server: RedisServer, issuer: Issuer,
          registered_versions: dict[str, Any]) -> Any:
    return build_app(tmp_path, sqlite_url, redis_server.url, WTF_CSRF_ENABLED=True,
                     ISSUER_URL=issuer.url, CA_BUNDLE=str(issuer.ca),
                     CLIENT_SECRET=issuer.secret("modelgate-panel"))


def signed_in(panel: Any, username: str) -> tuple[Any, str]:
    """A session for `username` with its roles (frank holds Engineer and Approver); its CSRF."""
    client = panel.test_client()
    sign_in(client, username, roles=PRINCIPALS[username])
    page = client.get("/").get_data(as_text=True)
    match = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert match
    return client, match.group(1)


def _prod_revisions(home: Path) -> None:
    """prod serving v1 with API revisions 1 and 2 (2 current), as the jobs record them."""
    record_deploy(home, "prod", "1", "job-prod-1")
    for number in (1, 2):
        db.session.add(ApiRevision(api_name="credit-risk", path="credit-risk",
                                   environment="prod", revision=number,
                                   policy_xml="<policies/>", created_by="bob",
                                   is_current=number == 2, job_id=f"publish-{number}"))
    db.session.commit()


def _job_count(panel: Any) -> int:
    with panel.app_context():
        return db.session.query(Job).count()


def _assert_protected_403(response: Any, where: str) -> None:
    assert response.status_code == 403, (where, response.status_code,
                                         response.get_data(as_text=True)[:300])
    text = response.get_data(as_text=True)
    assert "/approvals/new" in text, where
    if response.mimetype == "application/problem+json":
        body = response.get_json()
        assert body["status"] == 403 and "request a promotion" in body["detail"].lower()
        assert "protected environment" in body["detail"]
        assert response.headers["Link"].startswith("</approvals/new>")


DIRECT_JOBS = [
    ("deploy", {"environment": "prod"}),
    ("deploy", {"environment": "prod", "version": "2"}),
    ("deploy", {"environment": "prod", "rollback": True}),
    ("publish", {"environment": "prod"}),
    ("publish", {"environment": "prod", "policy_xml": "<policies/>"}),
    ("pipeline", {"environment": "prod"}),
    ("pipeline", {"environment": "prod", "until": "deploy"}),
]


def test_direct_prod_changes_are_refused_at_submit_for_every_principal(
        panel: Any, tmp_path: Path, ci_token: str, bot_token: str) -> None:
    with panel.app_context():
        _prod_revisions(tmp_path)
        requested = promotions.request("2", "prod", "for the crafted id", "alice",
                                      roles=frozenset(USERS["alice"]))
    crafted = [("deploy", {"environment": "prod", "version": "2",
                           "promotion_id": requested.id})]
    for username in PRINCIPALS:
        client, token = signed_in(panel, username)
        headers = {"X-CSRFToken": token}
        approver_only = username == "bob"
        for kind, params in DIRECT_JOBS + crafted:
            where = f"{username} REST {kind} {params}"
            response = client.post("/api/v1/jobs", headers=headers,
                                   json={"kind": kind, "params": params})
            if approver_only:  # refused by role before the environment is even looked at
                assert response.status_code == 403, where
            else:
                _assert_protected_403(response, where)
            form = client.post("/jobs/", data={"csrf_token": token, "kind": kind,
                                               "params": json.dumps(params)})
            assert form.status_code == 403, f"{username} form {kind} {params}"
        deploy_form = client.post("/deployments/prod/deploy",
                                  data={"csrf_token": token, "version": "2"})
        if approver_only:
            assert deploy_form.status_code == 403
        else:
            _assert_protected_403(deploy_form, f"{username} deployments form")
        api_rest = client.post("/api/v1/apis/credit-risk/revisions/1/rollback", headers=headers,
                               json={})
        api_form = client.post("/apis/revisions/1/rollback", data={"csrf_token": token})
        if approver_only:
            assert (api_rest.status_code, api_form.status_code) == (403, 403)
        else:
            _assert_protected_403(api_rest, f"{username} API rollback REST")
            _assert_protected_403(api_form, f"{username} API rollback form")
    ci = panel.test_client()
    for client_id, token in (("modelgate-ci", ci_token), ("release-bot", bot_token)):
        bearer = {"Authorization": f"Bearer {token}"}
        for kind, params in DIRECT_JOBS + crafted:
            _assert_protected_403(ci.post("/api/v1/jobs", headers=bearer,
                                          json={"kind": kind, "params": params}),
                                  f"{client_id} {kind} {params}")
        _assert_protected_403(ci.post("/api/v1/apis/credit-risk/revisions/1/rollback",
                                      headers=bearer, json={}), f"{client_id} API rollback")
    assert _job_count(panel) == 0
    # The bot holds both roles, and still cannot approve its own request.
    bot = {"Authorization": f"Bearer {bot_token}"}
    own = ci.post("/api/v1/promotions", headers=bot, json={"version": "3", "reason": "bot"})
    assert own.status_code == 201 and own.get_json()["requested_by"] == "release-bot"
    refused = ci.post(f"/api/v1/promotions/{own.get_json()['id']}/approve", headers=bot,
                      json={})
    assert refused.status_code == 403 and "someone else" in refused.get_json()["detail"]
    bearer = {"Authorization": f"Bearer {ci_token}"}
    assert _job_count(panel) == 0
    with panel.app_context():
        assert promotions.get(requested.id).state == "SUPERSEDED"  # by the bot's request
        current = db.session.query(ApiRevision).filter_by(is_current=True).one()
        assert current.revision == 2
    # Staging and key rotation of prod stay engineer actions.
    ok = ci.post("/api/v1/jobs", headers=bearer,
                 json={"kind": "deploy", "params": {"environment": "staging"}})
    assert ok.status_code == 202, ok.get_json()
    rotate = ci.post("/api/v1/jobs", headers=bearer,
                     json={"kind": "rotate-keys", "params": {"environment": "prod"}})
    assert rotate.status_code == 202, rotate.get_json()
    assert _job_count(panel) == 2


def test_the_approved_promotion_is_the_way_through(panel: Any, tmp_path: Path) -> None:
    frank, f_token = signed_in(panel, "frank")
    headers = {"X-CSRFToken": f_token}
    created = frank.post("/api/v1/promotions", headers=headers,
                         json={"version": "2", "reason": "v2 on staging is better"})
    assert created.status_code == 201
    pid = created.get_json()["id"]
    # Holding both roles does not let frank decide his own request.
    own = frank.post(f"/api/v1/promotions/{pid}/approve", headers=headers, json={})
    assert own.status_code == 403 and "someone else" in own.get_json()["detail"]
    assert _job_count(panel) == 0
    bob, b_token = signed_in(panel, "bob")
    approved = bob.post(f"/api/v1/promotions/{pid}/approve", headers={"X-CSRFToken": b_token},
                        json={"comment": "ok"})
    assert approved.status_code == 200
    job_id = approved.get_json()["deploy_job_id"]
    job = bob.get(f"/api/v1/jobs/{job_id}").get_json()
    assert (job["kind"], job["params"], job["status"]) == (
        "deploy", {"environment": "prod", "version": "2"}, "QUEUED")
    with panel.app_context():
        grant = protected.authorize_run(job_id, JobKind.DEPLOY, "prod")
        assert grant is not None and (grant.kind, grant.reference, grant.actor) == (
            "promotion", pid, "bob")
    # Retrying the approved job once it failed is a new direct submit: refused like any other.
    with panel.app_context():
        db.session.query(Job).filter_by(id=job_id).update({"status": "FAILED"})
        db.session.commit()
    alice, a_token = signed_in(panel, "alice")
    retry = alice.post(f"/jobs/{job_id}/retry", data={"csrf_token": a_token})
    assert retry.status_code == 403
    assert _job_count(panel) == 1


def test_the_worker_refuses_a_prod_job_without_a_grant(panel: Any) -> None:
    """A row that reached the queue some other way (replayed message, edited database) fails."""
    with panel.app_context():
        stray = Job(kind="deploy", status="QUEUED", params={"environment": "prod"},
                    requested_by="mallory", max_attempts=1, step="queued")
        db.session.add(stray)
        db.session.commit()
        with pytest.raises(protected.ProtectedEnvironment, match="approved promotion"):
            protected.authorize_run(stray.id, JobKind.DEPLOY, "prod")
        with pytest.raises(protected.ProtectedEnvironment):
            protected.authorize_run(stray.id, JobKind.PUBLISH, "prod")
        assert protected.authorize_run(stray.id, JobKind.DEPLOY, "staging") is None
        # A rejected promotion naming the job grants nothing either.
        row = promotions.request("3", "prod", "r", "alice", roles=frozenset(USERS["alice"]))
        promotions.reject(row.id, "bob", roles=frozenset(USERS["bob"]))
        db.session.query(promotions.Promotion).filter_by(id=row.id).update(
            {"deploy_job_id": stray.id})
        db.session.commit()
        with pytest.raises(protected.ProtectedEnvironment):
            protected.authorize_run(stray.id, JobKind.DEPLOY, "prod")


def test_rollback_is_a_break_glass_to_versions_that_served(panel: Any, tmp_path: Path) -> None:
    with panel.app_context():
        record_deploy(tmp_path, "prod", "1", "job-1")
        record_deploy(tmp_path, "prod", "2", "job-2")
    alice, token = signed_in(panel, "alice")
    never = alice.post("/deployments/prod/rollback",
                       data={"csrf_token": token, "version": "3", "reason": "try v3"})
    _assert_protected_403(never, "rollback to a version that never served prod")
    never_inbox = alice.post("/approvals/rollback", data={"csrf_token": token, "version": "3",
                                                          "reason": "try v3"})
    assert never_inbox.status_code == 403
    assert _job_count(panel) == 0
    bob, b_token = signed_in(panel, "bob")
    assert bob.post("/deployments/prod/rollback", data={
        "csrf_token": b_token, "version": "1", "reason": "x"}).status_code == 403
    done = alice.post("/deployments/prod/rollback",
                      data={"csrf_token": token, "version": "1", "reason": "v2 misbehaves"})
    assert done.status_code == 302
    job_id = done.headers["Location"].rstrip("/").rsplit("/", 1)[1]
    with panel.app_context():
        event = audit.events(action="deployment.rolled-back")[0]
        assert (event.actor, event.details["deploy_job_id"]) == ("alice", job_id)
        grant = protected.authorize_run(job_id, JobKind.DEPLOY, "prod")
        assert grant is not None and (grant.kind, grant.actor) == ("rollback", "alice")
        assert rollbacks.recent()[0]["reason"] == "v2 misbehaves"
    inbox = bob.get("/approvals/").get_data(as_text=True)
    assert "rolled back by alice: v2 misbehaves" in inbox
    assert f'data-rollback-job="{job_id}"' in inbox


@pytest.fixture
def served(panel: Any) -> Iterator[str]:
    """The panel over real HTTP on a free loopback port (the CLI talks to it as CI does)."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, panel, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def _cli_env(tmp_path: Path, issuer: Issuer, panel_url: str) -> dict[str, str]:
    home = tmp_path / "ci-home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    env.update(MODELGATE_HOME=str(home), MODELGATE_PANEL_URL=panel_url,
               MODELGATE_ISSUER_URL=issuer.url, MODELGATE_CA_BUNDLE=str(issuer.ca),
               MODELGATE_CI_CLIENT_ID="modelgate-ci",
               MODELGATE_CI_CLIENT_SECRET=issuer.secret("modelgate-ci"))
    return env


def test_cli_pipeline_on_prod_requests_a_promotion_and_waits_for_the_decision(
        panel: Any, served: str, issuer: Issuer, tmp_path: Path) -> None:
    env = _cli_env(tmp_path, issuer, served)
    argv = [sys.executable, "-m", "app", "pipeline", "run", "--environment", "prod"]
    bare = subprocess.run(argv, env=env, cwd=str(ROOT), capture_output=True, text=True,
                          timeout=60, check=False)
    assert bare.returncode != 0 and "--reason" in bare.stderr, bare.stdout + bare.stderr
    with panel.app_context():
        assert promotions.list_promotions() == []
    waiting = subprocess.Popen(argv + ["--version", "2", "--reason", "CI run 41", "--wait",
                                       "--timeout", "120"],
                               env=env, cwd=str(ROOT), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        def pending() -> Any:
            with panel.app_context():
                rows = promotions.list_promotions(state="PENDING")
                return rows[0] if rows else None

        row = wait_for(pending, 60, "the CLI's promotion request")
        assert (row.requested_by, row.model_version, row.reason) == (
            "modelgate-ci", "2", "CI run 41")
        with panel.app_context():
            promotions.reject(row.id, "bob", roles=frozenset(USERS["bob"]),
                              comment="metrics not convincing")
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 1, out + err
    assert f"promotion {row.id} requested" in out and "waiting for an approver" in out
    assert "rejected by bob: metrics not convincing" in out
    assert "metrics not convincing" in err
    assert _job_count(panel) == 0
    queued = subprocess.run(argv + ["--version", "3", "--reason", "CI run 42"], env=env,
                            cwd=str(ROOT), capture_output=True, text=True, timeout=60,
                            check=False)
    assert queued.returncode == 0, queued.stdout + queued.stderr
    assert "deploys v3 to prod blue/green" in queued.stdout
    assert _job_count(panel) == 0


def test_panel_offers_promotion_on_protected_cards_and_names_the_approver(
        panel: Any, tmp_path: Path) -> None:
    alice, token = signed_in(panel, "alice")
    created = alice.post("/api/v1/promotions", headers={"X-CSRFToken": token},
                         json={"version": "2", "reason": "better"})
    pid = created.get_json()["id"]
    bob, b_token = signed_in(panel, "bob")
    job_id = bob.post(f"/api/v1/promotions/{pid}/approve", headers={"X-CSRFToken": b_token},
                      json={}).get_json()["deploy_job_id"]
    with panel.app_context():
        record_deploy(tmp_path, "prod", "2", job_id)  # what the approved job records
        record_deploy(tmp_path, "staging", "3", "job-staging-3")
    page = alice.get("/deployments/").get_data(as_text=True)
    prod = page[page.index('id="env-prod"'):]
    staging = page[page.index('id="env-staging"'):page.index('id="env-prod"')]
    assert 'data-action="request-promotion"' in prod and 'data-action="deploy"' not in prod
    assert 'data-action="deploy"' in staging and 'data-action="request-promotion"' not in staging
    assert 'data-figure="approved-by">bob' in prod and f"promotion {pid}" in prod
    assert 'data-action="rotate-keys"' in prod  # key rotation stays an engineer action
    dashboard = alice.get("/").get_data(as_text=True)
    cards = re.findall(r'<li class="stage[^"]*" data-stage="[^"]+" data-kind="([a-z]+)"'
                       r'[^>]*data-job-id="([^"]*)"[^>]*data-environment="([a-z]+)"', dashboard)
    assert [(kind, env) for kind, _, env in cards] == [
        ("provision", "staging"), ("train", "staging"), ("deploy", "staging"),
        ("publish", "staging")]
    assert job_id not in dashboard.split('class="stages"')[1].split("</ol>")[0]
    assert dashboard.count('data-field="environment">on staging') == 4
    env_cards = alice.get("/dashboard/environments").get_data(as_text=True)
    prod_card = env_cards[env_cards.index('id="env-prod"'):]
    assert 'data-field="protected"' in prod_card
    assert 'data-action="request-promotion"' in prod_card
    listed = {e["environment"]: e for e in
              alice.get("/api/v1/deployments").get_json()["environments"]}
    assert listed["prod"]["protected"] and not listed["staging"]["protected"]
    assert listed["prod"]["serving_grant"] == {"kind": "promotion", "reference": pid,
                                               "actor": "bob"}


def test_api_revision_request_from_the_form_shows_the_diff(panel: Any, tmp_path: Path) -> None:
    with panel.app_context():
        _prod_revisions(tmp_path)  # revision 2 (current) serves "<policies/>"
    alice, token = signed_in(panel, "alice")
    new_page = alice.get("/approvals/new").get_data(as_text=True)
    assert 'id="api-revision-form"' in new_page and "credit-risk revision 2" in new_page
    # prod's API rollback button is a request to publish the earlier revision's policy again.
    apis_page = alice.get("/apis/").get_data(as_text=True)
    assert 'data-request-promotion="1"' in apis_page and 'data-rollback="1"' not in apis_page
    again = alice.get("/approvals/new?api_revision=1").get_data(as_text=True)
    assert 'value="return to revision 1"' in again
    policy = "<policies>\n  <inbound>\n    <base />\n  </inbound>\n</policies>"
    done = alice.post("/approvals/", data={"csrf_token": token, "kind": "api-revision",
                                           "environment": "prod", "policy_xml": policy,
                                           "reason": "explicit inbound section"})
    assert done.status_code == 302
    pid = done.headers["Location"].rstrip("/").rsplit("/", 1)[1]
    same = alice.post("/approvals/", data={"csrf_token": token, "kind": "api-revision",
                                           "environment": "prod", "policy_xml": "<policies/>",
                                           "reason": "no change"})
    assert same.status_code == 422  # the current revision already serves it
    bob, b_token = signed_in(panel, "bob")
    page = bob.get(f"/approvals/{pid}").get_data(as_text=True)
    assert "revision 2 (current)" in page and '<span class="diff-del">-&lt;policies/&gt;' in page
    assert '<span class="diff-add">+  &lt;inbound&gt;</span>' in page
    assert "publishes credit-risk revision 3 to prod with the requested policy" in page
    assert f'data-approve="{pid}"' in page
    with panel.app_context():
        row = promotions.get(pid)
        assert (row.kind, row.state, row.model_name) == ("api-revision", "PENDING",
                                                        "credit-risk")
    approved = bob.post(f"/approvals/{pid}/approve", data={"csrf_token": b_token})
    assert approved.status_code == 302
    job = bob.get(approved.headers["Location"].replace("/jobs/", "/api/v1/jobs/")).get_json()
    assert (job["kind"], job["params"]) == ("publish", {"environment": "prod",
                                                        "policy_xml": policy})
    with panel.app_context():
        grant = protected.authorize_run(job["id"], JobKind.PUBLISH, "prod")
        assert grant is not None and grant.reference == pid
