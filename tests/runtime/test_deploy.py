"""Deploy and rotate-keys jobs end to end on real processes (worker, runtime, replicas, gateway)."""

from __future__ import annotations

import requests

from tests.runtime.conftest import EXAMPLE, PIPELINE_YAML, Stack, publish_staging


def _direct(url: str, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return requests.post(f"{url}/score", json={"data": [EXAMPLE]}, headers=headers,
                         timeout=10).status_code


def test_deploy_job_end_to_end_on_staging(stack: Stack) -> None:
    job = stack.run("deploy")  # empty params: staging, the latest registered version
    assert job["status"] == "SUCCEEDED", job
    result = job["result"]
    assert result["environment"] == "staging" and result["slot"] == "blue"
    assert result["model"]["version"] == stack.versions[-1]
    assert result["replaced"] == []
    messages = [line["message"] for line in job["log"]]
    assert any(m.startswith("smoke test passed") for m in messages), messages
    smoke = next(m for m in messages if m.startswith("smoke test passed"))
    assert "P(bad) " in smoke and "{" not in smoke, smoke  # read as words, not a dict
    assert any(m.endswith("(1 replica)") for m in messages), messages

    from app.backends.local import gateway as gateway_config
    from app.ml.registry import ModelRegistry
    from app.services import deployments

    with stack.app.app_context():
        active = deployments.active("staging")
        assert active is not None and active.url == result["url"]
        assert active.model_version == stack.versions[-1] and active.slot == "blue"
    named = gateway_config.read(stack.home)["named_values"]
    assert named["staging-backend-url"] == {"secret": False, "value": result["url"]}
    assert named["staging-backend-key"]["secret"] is True
    alias = ModelRegistry.for_home(stack.home).get_alias("german-credit", "staging")
    assert alias is not None and alias.version == stack.versions[-1]

    url, primary, secondary = stack.keys()
    assert _direct(url, None) == 401
    assert _direct(url, "not-the-key") == 401
    assert _direct(url, primary) == 200 and _direct(url, secondary) == 200
    assert primary not in named["staging-backend-key"]["value"]

    publish_staging(stack)
    r = requests.Response()
    for _ in range(40):  # the gateway re-reads its config within a second
        r = stack.score()
        if r.status_code == 200:
            break
        import time

        time.sleep(0.1)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["version"] == stack.versions[-1]
    assert set(body["predictions"][0]["probabilities"]) == {"good", "bad"}

    # A redelivered message for the same job is a no-op: still one slot for this job.
    stack.app.extensions["celery"].send_task("modelgate.deployments.deploy", args=[job["id"]])
    again = stack.finish(job["id"])
    assert again["status"] == "SUCCEEDED" and again["attempts"] == 1
    with stack.app.app_context():
        from sqlalchemy import func, select

        from app.db import Deployment
        from app.extensions import db

        count = db.session.scalar(select(func.count()).select_from(Deployment)
                                  .where(Deployment.job_id == job["id"]))
        assert count == 1


def test_rotate_keys_refuses_the_old_keys(stack: Stack) -> None:
    url, old_primary, old_secondary = stack.keys()
    job = stack.run("rotate-keys", {"environment": "staging"})
    assert job["status"] == "SUCCEEDED", job
    new_url, primary, secondary = stack.keys()
    assert new_url == url
    assert {primary, secondary}.isdisjoint({old_primary, old_secondary})
    assert _direct(url, old_primary) == 401 and _direct(url, old_secondary) == 401
    assert _direct(url, primary) == 200 and _direct(url, secondary) == 200
    assert stack.score().status_code == 200
    with stack.app.app_context():
        from app.services import audit

        events = audit.events(action="keys.rotated")
        assert events and events[0].target == "environment:staging"
        assert old_primary not in str(events[0].details)


def test_failed_deploy_leaves_the_old_slot_serving(stack: Stack) -> None:
    before = stack.keys()[0]
    stack.pipeline.write_text(PIPELINE_YAML.format(ready=6))
    try:
        job = stack.run("deploy", {"version": stack.versions[0]})
    finally:
        stack.pipeline.write_text(PIPELINE_YAML.format(ready=60))
    assert job["status"] == "FAILED", job
    assert "not ready within 6 s" in job["error"] and "restarts" in job["error"]
    assert stack.keys()[0] == before
    assert stack.score().status_code == 200
    with stack.app.app_context():
        from app.services import deployments

        failed = deployments.by_job(job["id"])
        assert failed is not None and failed.state == "FAILED" and failed.traffic == 0


def test_bad_params_fail_naming_them(stack: Stack) -> None:
    from tests.conftest import csrf_headers
    from tests.support import refused_at_submit

    client = stack.client()
    body = refused_at_submit(client, csrf_headers(client), "deploy", {"environment": "qa"})
    assert "params.environment" in body["detail"]  # malformed: refused at submit
    job = stack.run("deploy", {"version": "999"})  # well-formed, but no such version
    assert job["status"] == "FAILED" and "params.version" in job["error"]
    job = stack.run("rotate-keys", {"environment": "prod"})
    assert job["status"] == "FAILED" and "no active deployment" in job["error"]
