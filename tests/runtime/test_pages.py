"""The Deployments page and GET /api/v1/deployments: roles, CSRF, masked keys, audited reveal."""

from __future__ import annotations

import json
import re

from tests.runtime.conftest import Stack


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def test_page_shows_environments_with_masked_keys(deployed: Stack) -> None:
    stack = deployed
    url, primary, secondary = stack.keys()
    client = stack.client("alice")
    page = client.get("/deployments/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'data-environment="staging"' in html and 'data-action="deploy"' in html
    assert 'data-action="rotate-keys"' in html
    assert 'data-action="reveal"' not in html  # engineers do not see keys
    assert primary not in html and secondary not in html
    assert "ready (healthy)" in html

    body = client.get("/api/v1/deployments").get_json()
    staging = next(e for e in body["environments"] if e["environment"] == "staging")
    assert staging["active"]["url"] == url and staging["active"]["traffic"] == 100
    assert staging["active"]["health"]["state"] == "healthy"
    assert staging["active"]["key_age_days"] >= 0
    assert primary not in json.dumps(body)
    assert ('data-action="rollback"' in html) == bool(staging["previous_version"])
    spec = client.get("/api/v1/openapi.json").get_json()
    assert "/deployments" in spec["paths"]

    erin = stack.client("erin")
    assert erin.get("/deployments/").status_code == 200
    assert 'data-action="deploy"' not in erin.get("/deployments/").get_data(as_text=True)


def test_actions_need_the_role_and_csrf(deployed: Stack) -> None:
    stack = deployed
    carol = stack.client("carol")
    token = _csrf(carol.get("/deployments/").get_data(as_text=True))
    assert carol.post("/deployments/staging/deploy",
                      data={"csrf_token": token}).status_code == 403
    alice = stack.client("alice")
    assert alice.post("/deployments/staging/rotate-keys").status_code == 400  # no CSRF token
    token = _csrf(alice.get("/deployments/").get_data(as_text=True))
    assert alice.post("/deployments/staging/reveal",
                      data={"csrf_token": token}).status_code == 403
    r = alice.post("/deployments/staging/rotate-keys", data={"csrf_token": token})
    assert r.status_code == 302 and "/jobs/" in r.headers["Location"]
    job = stack.finish(r.headers["Location"].rstrip("/").rsplit("/", 1)[1])
    assert job["status"] == "SUCCEEDED" and job["requested_by"] == "alice", job


def test_admin_reveal_is_a_post_and_audited(deployed: Stack) -> None:
    stack = deployed
    _, primary, secondary = stack.keys()
    dave = stack.client("dave")
    html = dave.get("/deployments/").get_data(as_text=True)
    assert 'data-action="reveal"' in html and primary not in html
    assert dave.get("/deployments/staging/reveal").status_code == 405
    r = dave.post("/deployments/staging/reveal", data={"csrf_token": _csrf(html)})
    assert r.status_code == 200
    assert r.headers["Cache-Control"] == "no-store"
    shown = r.get_data(as_text=True)
    assert primary in shown and secondary in shown
    with stack.app.app_context():
        from app.services import audit

        event = audit.events(action="keys.revealed")[0]
        assert event.actor == "dave" and event.target == "environment:staging"
        assert primary not in json.dumps(event.details)
