"""A prod deploy runs the configured two replicas on one shared port, each reported ready."""

from __future__ import annotations

import requests

from tests.runtime.conftest import EXAMPLE, Stack


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
