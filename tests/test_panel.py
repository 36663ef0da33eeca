"""Panel basics: factory and config, health, pages, CSRF, live events, API errors."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from app.config import load_config
from app.errors import ConfigError
from tests.conftest import build_app, csrf_headers, sign_in


@pytest.fixture
def app(tmp_path: Path, redis_server: Any, sqlite_url: str) -> Any:
    return build_app(tmp_path, sqlite_url, redis_server.url)


@pytest.mark.parametrize("key", ["", "dev", "change-me", "short-key"])
def test_production_start_refuses_weak_secret_key(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        load_config({"HOME": str(tmp_path), "SECRET_KEY": key})


def test_environment_overrides_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELGATE_JOB_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("MODELGATE_REDIS_URL", "redis://127.0.0.1:9/0")
    config = load_config({"HOME": str(tmp_path), "TESTING": True})
    assert config["JOB_MAX_ATTEMPTS"] == 5
    assert config["REDIS_URL"] == "redis://127.0.0.1:9/0"
    assert config["DATABASE_URL"] == f"sqlite:///{tmp_path.resolve() / 'modelgate.db'}"


def test_pages_require_sign_in_and_render(app: Any) -> None:
    client = app.test_client()
    assert client.get("/").status_code == 302
    assert client.get("/api/v1/jobs").status_code == 401
    sign_in(client, "erin")
    page = client.get("/")
    assert page.status_code == 200
    assert b"Erin" in page.data
    assert b"Run self-check" not in page.data  # erin has no role to run jobs
    assert client.get("/jobs/").status_code == 200
    assert client.get("/jobs/nope").status_code == 404


def test_security_headers(app: Any) -> None:
    response = app.test_client().get("/health")
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"]


def test_job_without_role_is_forbidden_and_nothing_is_queued(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "carol")
    r = client.post("/api/v1/jobs", json={"kind": "selfcheck"}, headers=csrf_headers(client))
    assert r.status_code == 403
    assert "MLOps.Engineer" in r.get_json()["detail"]
    r = client.post("/jobs/", data={"kind": "selfcheck"})
    assert r.status_code == 400  # no CSRF token on a form post
    sign_in(client, "alice")
    assert client.get("/api/v1/jobs").get_json()["jobs"] == []


def test_post_without_csrf_changes_nothing(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "alice")
    r = client.post("/api/v1/jobs", json={"kind": "selfcheck"})
    assert r.status_code == 400
    assert client.get("/api/v1/jobs").get_json()["jobs"] == []


@pytest.mark.parametrize("body,status,field", [
    ({"kind": "bogus"}, 422, "kind"),
    ({}, 422, "kind"),
    ({"kind": "selfcheck", "params": [1]}, 422, "params"),
])
def test_bad_job_requests_get_clear_errors(app: Any, body: dict[str, Any], status: int,
                                           field: str | None) -> None:
    client = app.test_client()
    sign_in(client, "alice")
    r = client.post("/api/v1/jobs", json=body, headers=csrf_headers(client))
    assert r.status_code == status
    assert r.mimetype == "application/problem+json"
    if field:
        assert r.get_json()["errors"][0]["field"] == field


def test_malformed_json_is_400(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "alice")
    r = client.post("/api/v1/jobs", data="{nope", content_type="application/json",
                    headers=csrf_headers(client))
    assert r.status_code == 400


def test_openapi_describes_the_jobs_api(app: Any) -> None:
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel"} <= set(doc["paths"])


def test_event_stream_pushes_job_changes(app: Any) -> None:
    """A queued job shows up on the SSE stream (backed by Redis pub/sub)."""
    app.config["SSE_MAX_SECONDS"] = 5
    client = app.test_client()
    sign_in(client, "alice")
    headers = csrf_headers(client)
    response = client.get("/jobs/events", buffered=False)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    received: list[str] = []
    reader = threading.Thread(
        target=lambda: received.extend(chunk.decode() for chunk in response.response),
        daemon=True)
    reader.start()
    import time

    time.sleep(1.0)  # let the stream subscribe before the event is published
    r = client.post("/api/v1/jobs", json={"kind": "selfcheck"}, headers=headers)
    job_id = r.get_json()["id"]
    reader.join(10)
    events = [json.loads(block.split("data: ", 1)[1]) for block in "".join(received).split("\n\n")
              if block.startswith("event: job")]
    assert any(e["job"]["id"] == job_id and e["job"]["status"] == "QUEUED" for e in events)


def test_polling_fallback_returns_new_log_lines(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "alice")
    job_id = client.post("/api/v1/jobs", json={"kind": "selfcheck"},
                         headers=csrf_headers(client)).get_json()["id"]
    first = client.get(f"/jobs/{job_id}/status").get_json()
    assert first["job"]["status"] == "QUEUED"
    assert first["log"][0]["message"] == "queued by alice"
    after = first["log"][-1]["seq"]
    assert client.get(f"/jobs/{job_id}/status?after={after}").get_json()["log"] == []
