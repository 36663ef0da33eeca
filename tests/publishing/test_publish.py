"""Publish jobs on a real worker: refusal without a deployment, revisions, compile errors,
rollback from the APIs page, and GET /api/v1/apis."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import build_app, csrf_headers, sign_in
from tests.support import RedisServer, WorkerProcess, child_env, wait_for

GATEWAY_URL = "https://gateway.test:8000"


class Panel:
    """The panel app with alice signed in and one worker."""

    def __init__(self, home: Path, app: Any) -> None:
        self.home, self.app = home, app
        self.client = app.test_client()
        sign_in(self.client, "alice")
        self.headers = csrf_headers(self.client)

    def run(self, kind: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        r = self.client.post("/api/v1/jobs", json={"kind": kind, "params": params or {}},
                             headers=self.headers)
        assert r.status_code == 202, r.get_json()
        job_id = r.get_json()["id"]

        def done() -> dict[str, Any] | None:
            job = self.client.get(f"/api/v1/jobs/{job_id}?log=1").get_json()
            return job if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

        return dict(wait_for(done, 60, f"job {job_id} to end", interval=0.2))

    def gateway_apis(self) -> dict[str, dict[str, Any]]:
        config = json.loads((self.home / "gateway" / "config.json").read_text())
        return {api["name"]: api for api in config["apis"]}


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Panel]:
    home = tmp_path_factory.mktemp("home")
    redis = RedisServer(home / "redis").start()
    db_url = f"sqlite:///{home / 'modelgate.db'}"
    app = build_app(home, db_url, redis.url, GATEWAY_URL=GATEWAY_URL)
    worker = WorkerProcess(home, child_env(home, db_url, redis.url, GATEWAY_URL=GATEWAY_URL),
                           concurrency=1).start()
    try:
        yield Panel(home, app)
    finally:
        worker.stop()
        redis.stop()


def _deploy(panel: Panel, environment: str) -> None:
    """What a deploy job leaves behind: an ACTIVE slot and the gateway's backend values."""
    from app.backends.local import gateway as gateway_config
    from app.db import Deployment, DeploymentState
    from app.extensions import db

    with panel.app.app_context():
        db.session.add(Deployment(environment=environment, slot="blue", model_name="german-credit",
                                  model_version="1", state=DeploymentState.ACTIVE, port=9,
                                  primary_key_enc="x", secondary_key_enc="y"))
        db.session.commit()
    gateway_config.set_backend(panel.home, environment, "http://127.0.0.1:9", "backend-key-1")


def _audit_actions(panel: Panel) -> list[str]:
    from app.services import audit

    with panel.app.app_context():
        return [e.action for e in audit.events(limit=500)]


def test_publish_is_refused_without_a_deployment(panel: Panel) -> None:
    # staging: a direct publish to prod (protected) is refused at submit, before this check.
    job = panel.run("publish", {"environment": "staging"})
    assert job["status"] == "FAILED"
    assert "staging has no active deployment" in job["error"]
    assert not (panel.home / "gateway" / "config.json").exists() or not panel.gateway_apis()


def test_bad_params_are_refused_naming_the_field(panel: Panel) -> None:
    """Checked at submit (the kind's parameter schema): 422 naming the field, no job row."""
    before = panel.client.get("/api/v1/jobs", headers=panel.headers).get_json()
    for params, field in (({"environment": "qa"}, "params.environment"),
                          ({"rate_limit": 0}, "params.rate_limit"),
                          ({"colour": "blue"}, "params.colour")):
        r = panel.client.post("/api/v1/jobs", json={"kind": "publish", "params": params},
                              headers=panel.headers)
        assert r.status_code == 422 and field in r.get_json()["detail"]
        assert [e["field"] for e in r.get_json()["errors"]] == [field]
    assert panel.client.get("/api/v1/jobs", headers=panel.headers).get_json() == before


def test_each_publish_is_a_new_current_revision(panel: Panel) -> None:
    _deploy(panel, "staging")
    first = panel.run("publish")
    assert first["status"] == "SUCCEEDED", first
    assert first["result"]["revision"] == 1
    assert first["result"]["url"] == f"{GATEWAY_URL}/staging/credit-risk"
    second = panel.run("publish", {"environment": "staging", "rate_limit": 42})
    assert second["status"] == "SUCCEEDED", second
    assert second["result"]["revision"] == 2

    api = panel.gateway_apis()["credit-risk-staging"]
    assert (api["path"], api["revision"], api["environment"]) == ("staging/credit-risk", 2,
                                                                  "staging")
    assert 'calls="42"' in api["policy_xml"]
    assert "<audience>api://modelgate</audience>" in api["policy_xml"]
    # the rules recorded from the (local) identity settings: RFC 9068 access tokens only
    assert (api["issuer"], api["audiences"], api["access_token_type"]) == (
        "{{issuer-url}}", ["api://modelgate"], "at+jwt")
    assert "Score.Invoke" in api["policy_xml"]
    assert "{{staging-backend-key}}" in api["policy_xml"]
    assert "backend-key-1" not in (panel.home / "gateway" / "config.json").read_text()

    listed = panel.client.get("/api/v1/apis").get_json()
    assert [(a["name"], a["revision"], a["url"]) for a in listed["apis"]] == [
        ("credit-risk-staging", 2, f"{GATEWAY_URL}/staging/credit-risk")]
    assert _audit_actions(panel).count("api.published") == 2


def test_a_policy_that_does_not_compile_fails_naming_the_element(panel: Panel) -> None:
    bad = ("<policies><inbound><base /><xsl-transform /></inbound><backend><base /></backend>"
           "<outbound><base /></outbound><on-error><base /></on-error></policies>")
    job = panel.run("publish", {"policy_xml": bad})
    assert job["status"] == "FAILED"
    assert "<xsl-transform>" in job["error"], job["error"]
    # Nothing changed: the gateway and the database still serve revision 2.
    assert panel.gateway_apis()["credit-risk-staging"]["revision"] == 2
    listed = panel.client.get("/api/v1/apis").get_json()["apis"]
    assert listed[0]["revision"] == 2


def test_rollback_from_the_apis_page(panel: Panel) -> None:
    page = panel.client.get("/apis/").get_data(as_text=True)
    assert "credit-risk-staging" in page and "Roll back to 1" in page
    assert 'data-rollback="2"' not in page  # the current revision has no button
    form = re.search(r'action="(/apis/revisions/(\d+)/rollback)"', page)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert form and token

    carol = panel.app.test_client()
    sign_in(carol, "carol")
    refused = carol.post(form.group(1), headers=csrf_headers(carol))
    assert refused.status_code == 403
    assert panel.gateway_apis()["credit-risk-staging"]["revision"] == 2

    r = panel.client.post(form.group(1), data={"csrf_token": token.group(1)})
    assert r.status_code == 302, r.get_data(as_text=True)
    assert panel.gateway_apis()["credit-risk-staging"]["revision"] == 1
    listed = panel.client.get("/api/v1/apis").get_json()["apis"]
    assert [(a["revision"], a["is_current"]) for a in listed] == [(1, True)]
    assert "api.rolled-back" in _audit_actions(panel)
    again = panel.client.post(form.group(1), data={"csrf_token": token.group(1)})
    assert again.status_code == 409

    # The next publish is revision 3, whatever was rolled back to.
    third = panel.run("publish")
    assert third["result"]["revision"] == 3
    assert panel.gateway_apis()["credit-risk-staging"]["revision"] == 3


def test_revisions_and_rollback_over_the_rest_api(panel: Panel) -> None:
    base = "/api/v1/apis/credit-risk-staging/revisions"
    revisions = panel.client.get(base).get_json()["revisions"]
    assert [(r["revision"], r["is_current"]) for r in revisions] == [
        (3, True), (2, False), (1, False)]
    carol = panel.app.test_client()
    sign_in(carol, "carol")
    refused = carol.post(f"{base}/2/rollback", headers=csrf_headers(carol))
    assert refused.status_code == 403 and "MLOps.Engineer" in refused.get_json()["detail"]
    r = panel.client.post(f"{base}/2/rollback", headers=panel.headers)
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["revision"], r.get_json()["is_current"]) == (2, True)
    assert panel.gateway_apis()["credit-risk-staging"]["revision"] == 2
    assert panel.client.post(f"{base}/2/rollback", headers=panel.headers).status_code == 409
    assert panel.client.post(f"{base}/9/rollback", headers=panel.headers).status_code == 404
    assert panel.client.get("/api/v1/apis/nope/revisions").status_code == 404


def test_publish_is_in_the_openapi_document(panel: Panel) -> None:
    doc = panel.client.get("/api/v1/openapi.json").get_json()
    assert {"/apis", "/apis/{name}/revisions",
            "/apis/{name}/revisions/{revision}/rollback"} <= set(doc["paths"])
    assert "parent_id" in json.dumps(doc["paths"]["/jobs"]["get"])


SECRET_RULE = ("outbound/set-header[@name='X-Debug'] uses the secret named value "
               "staging-backend-key; secret named values may only be used in <inbound> "
               "set-header to the backend")


def _current_policy(panel: Panel) -> str:
    return str(panel.gateway_apis()["credit-risk-staging"]["policy_xml"])


def test_13_a_policy_returning_the_backend_key_fails_naming_the_element(panel: Panel) -> None:
    """The default policy plus an outbound set-header of the key is refused at publish."""
    revision = panel.gateway_apis()["credit-risk-staging"]["revision"]
    leaky = _current_policy(panel).replace(
        "<outbound>\n    <base />", '<outbound><base /><set-header name="X-Debug"><value>'
                                    "{{staging-backend-key}}</value></set-header>", 1)
    assert "X-Debug" in leaky
    job = panel.run("publish", {"policy_xml": leaky})
    assert job["status"] == "FAILED"
    assert SECRET_RULE in job["error"], job["error"]
    assert "backend-key-1" not in json.dumps(job)
    assert panel.gateway_apis()["credit-risk-staging"]["revision"] == revision


@pytest.mark.parametrize(("edit", "message"), [
    (lambda xml: xml.replace("<value>Score.Invoke</value>", "<value>Reader</value>"),
     "gateway.anonymous_apis"),
    (lambda xml: xml.replace('base-url="{{staging-backend-url}}"',
                             'base-url="https://attacker.example"'),
     "inbound/set-backend-service/@base-url points at https://attacker.example"),
    (lambda xml: re.sub(r'<openid-config url="[^"]+"',
                        '<openid-config url="https://evil.example/.well-known/openid-'
                        'configuration"', xml), "gateway.anonymous_apis"),
])
def test_13_a_policy_without_the_role_check_or_with_another_backend_fails(
        panel: Panel, edit: Any, message: str) -> None:
    """Dropping the role check, trusting another issuer or forwarding elsewhere is refused."""
    revision = panel.gateway_apis()["credit-risk-staging"]["revision"]
    unsafe = edit(_current_policy(panel))
    assert unsafe != _current_policy(panel)
    job = panel.run("publish", {"policy_xml": unsafe})
    assert job["status"] == "FAILED"
    assert message in job["error"], job["error"]
    assert panel.gateway_apis()["credit-risk-staging"]["revision"] == revision


def test_13_rollback_to_an_unsafe_stored_revision_is_refused(panel: Panel) -> None:
    """A revision stored before the rules (no validate-jwt) cannot be made current: 422."""
    from app.db import ApiRevision
    from app.extensions import db

    with panel.app.app_context():
        row = ApiRevision(api_name="credit-risk-staging", path="staging/credit-risk",
                          environment="staging", revision=99, created_by="alice",
                          is_current=False, policy_xml=(
                              '<policies><inbound><set-header name="Authorization" exists-action'
                              '="override"><value>Bearer {{staging-backend-key}}</value>'
                              "</set-header></inbound></policies>"))
        db.session.add(row)
        db.session.commit()
    revision = panel.gateway_apis()["credit-risk-staging"]["revision"]
    r = panel.client.post("/api/v1/apis/credit-risk-staging/revisions/99/rollback",
                          headers=panel.headers)
    assert r.status_code == 422, r.get_json()
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert "would serve anonymous callers" in r.get_json()["detail"]
    assert panel.gateway_apis()["credit-risk-staging"]["revision"] == revision
