"""A prod deploy runs the configured two replicas on one shared port, each reported ready;
prod is reached only through approved promotions, which end with the gateway answering."""

from __future__ import annotations

import requests

from tests.conftest import csrf_headers
from tests.runtime.conftest import EXAMPLE, Stack
from tests.support import wait_for


def test_prod_deploy_runs_two_replicas_sharing_a_port(deployed: Stack) -> None:
    stack = deployed
    job = stack.promote(stack.versions[1])  # prod is protected: an approved promotion deploys
    assert job["status"] == "SUCCEEDED", job
    assert job["result"]["replicas"] == 2 and job["result"]["environment"] == "prod"
    entry = stack.status()["deployments"][job["result"]["deployment_id"]]
    pids = {r["pid"] for r in entry["replicas"] if r["state"] == "ready"}
    assert entry["replicas_ready"] == 2 and len(pids) == 2
    url, primary, _ = stack.keys("prod")
    assert url == job["result"]["url"] and url.endswith(f":{entry['port']}")
    r = requests.post(f"{url}/score", json={"data": [EXAMPLE]},
                      headers={"Authorization": f"Bearer {primary}"}, timeout=10)
    assert r.status_code == 200 and r.json()["model"]["version"] == stack.versions[1]
    staging_url, _, _ = stack.keys("staging")
    assert staging_url != url  # environments never share a slot
    # prod had no API: the approval's job published its default policy as revision 1, so
    # prod answers through the gateway with no other step.
    assert job["result"]["published"]["revision"] == 1, job["result"]
    logged = [line["message"] for line in job["log"]]
    assert any(m.startswith("stage 1/2: deploying") for m in logged), logged
    assert any(m.startswith("stage 2/2:") for m in logged), logged
    detail = stack.client("bob").get(f"/jobs/{job['id']}").get_data(as_text=True)
    assert "API credit-risk revision 1" in detail  # one job, both stages' results linked
    answer = wait_for(lambda: (a := stack.score("credit-risk")).status_code == 200 and a, 10,
                      "prod answering through the gateway")
    assert answer.json()["model"]["version"] == stack.versions[1]


def test_api_revision_promotion_is_diffed_approved_and_served(deployed: Stack) -> None:
    stack = deployed
    alice, bob, dave = stack.client("alice"), stack.client("bob"), stack.client("dave")
    current = alice.get("/api/v1/apis/credit-risk/revisions").get_json()["revisions"][0]
    assert current["is_current"]
    from app.services import apis

    with stack.app.app_context():
        policy = apis.current("credit-risk").policy_xml  # type: ignore[union-attr]
    header = ('<set-header name="X-Policy-Review" exists-action="override">'
              "<value>four-eyes</value></set-header>")
    custom = policy.replace("<outbound>\n    <base />", f"<outbound>\n    <base />\n    {header}")
    assert custom != policy
    jobs_before = len(alice.get("/api/v1/jobs?limit=500").get_json()["jobs"])
    for user in (alice, dave):  # engineer and admin alike
        direct = user.post("/api/v1/jobs", headers=csrf_headers(user), json={
            "kind": "publish", "params": {"environment": "prod", "policy_xml": custom}})
        assert direct.status_code == 403 and "/approvals/new" in direct.get_json()["detail"]
    assert len(alice.get("/api/v1/jobs?limit=500").get_json()["jobs"]) == jobs_before
    created = alice.post("/api/v1/promotions", headers=csrf_headers(alice), json={
        "kind": "api-revision", "environment": "prod", "policy_xml": custom,
        "reason": "mark reviewed answers"})
    assert created.status_code == 201, created.get_json()
    pid = created.get_json()["id"]
    assert created.get_json()["plan"] == [
        f"publishes credit-risk revision {current['revision'] + 1} to prod with the requested "
        "policy"]
    page = bob.get(f"/approvals/{pid}").get_data(as_text=True)
    assert f'data-diff="{pid}"' in page and f"revision {current['revision']} (current)" in page
    assert '<span class="diff-add">+    &lt;set-header name=&#34;X-Policy-Review&#34;' in page
    assert alice.post(f"/api/v1/promotions/{pid}/approve", headers=csrf_headers(alice),
                      json={}).status_code == 403  # not an approver, and her own request
    approved = bob.post(f"/api/v1/promotions/{pid}/approve", headers=csrf_headers(bob), json={})
    assert approved.status_code == 200, approved.get_json()
    assert dave.post(f"/api/v1/promotions/{pid}/approve", headers=csrf_headers(dave),
                     json={}).status_code == 409
    job = stack.finish(approved.get_json()["deploy_job_id"])
    assert job["status"] == "SUCCEEDED" and job["kind"] == "publish", job
    assert job["result"]["revision"] == current["revision"] + 1
    served = wait_for(lambda: (a := stack.score("credit-risk")).headers.get("X-Policy-Review")
                      and a, 10, "the gateway serving the approved revision")
    assert served.status_code == 200 and served.headers["X-Policy-Review"] == "four-eyes"
