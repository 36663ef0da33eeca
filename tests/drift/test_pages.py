"""The Drift page: who sees it, the alert and a chart per field, Retrain for engineers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from app.db import Job
from tests.conftest import csrf_headers, sign_in
from tests.drift.conftest import applicants, shifted, store_samples
from tests.support import RedisServer

FIELDS = ("Age", "Sex", "Job", "Housing", "Saving accounts", "Checking account",
          "Credit amount", "Duration", "Purpose", "P(bad)")


def client_for(app: Any, user: str) -> Any:
    client = app.test_client()
    sign_in(client, user)
    return client


def drifted(app: Any, home: Path, redis_server: RedisServer) -> None:
    """Two checks of staging: the applicants as trained on, then shifted."""
    from app.services import drift

    with app.app_context():
        store_samples(home, redis_server.url, "staging", applicants()[:300])
        drift.check_environment("staging")
        store_samples(home, redis_server.url, "staging", shifted(applicants()[300:600]))
        drift.check_environment("staging")


def test_engineers_see_the_alert_a_chart_per_field_and_retrain(
        panel: Any, home: Path, redis_server: RedisServer) -> None:
    drifted(panel, home, redis_server)
    alice = client_for(panel, "alice")
    assert alice.get("/drift/").headers["Location"].endswith("/drift/prod")
    page = alice.get("/drift/staging").get_data(as_text=True)
    assert '>Drift</a>' in page  # the nav entry
    assert 'id="drift-alert" data-band="act"' in page
    alerting = re.findall(r'<li data-field="([^"]+)" data-band="([^"]+)"', page)
    assert ("Age", "act") in alerting and ("Credit amount", "act") in alerting
    assert "Sex" not in dict(alerting)
    # A chart per field and of P(bad), two checks each, the current band beside it.
    for name in FIELDS:
        assert f'data-chart="psi" data-field="{name}"' in page
    charts = re.findall(r'<svg class="chart drift-chart".*?</svg>', page, re.S)
    assert len(charts) == len(FIELDS)
    assert all(len(re.findall(r"<(?:circle|polygon) ", c)) == 2 for c in charts)
    # Age's PSI is far above the scale's end (4 × act): drawn as a triangle at the top.
    age_chart = next(c for c in charts if 'data-field="Age"' in c)
    assert re.search(r'<polygon [^>]*data-band="act"><title>[^<]*PSI \d+\.\d{3} \(act\)',
                     age_chart)
    bands = dict(re.findall(r'<figure class="drift-field" data-field="([^"]+)" '
                            r'data-band="([^"]+)"', page))
    assert bands["Age"] == "act" and bands["Sex"] == "stable"
    assert 'id="retrain"' in page
    assert "0.1 to 0.25" in page and "Every hour" in page
    # Labels from app/labels.py, never raw band values.
    assert '<span class="badge band-act">Act</span>' in page


def test_approvers_read_it_without_retrain_others_are_refused(
        panel: Any, home: Path, redis_server: RedisServer) -> None:
    drifted(panel, home, redis_server)
    page = client_for(panel, "bob").get("/drift/staging").get_data(as_text=True)
    assert 'id="drift-alert"' in page and 'id="retrain"' not in page
    assert 'id="retrain-note"' in page
    assert client_for(panel, "dave").get("/drift/staging").status_code == 200
    for user in ("carol", "erin"):
        client = client_for(panel, user)
        assert client.get("/drift/staging").status_code == 403
        assert '>Drift</a>' not in client.get("/").get_data(as_text=True)
    assert client_for(panel, "alice").get("/drift/nowhere").status_code == 404


def test_no_checks_yet(panel: Any) -> None:
    page = client_for(panel, "alice").get("/drift/prod").get_data(as_text=True)
    assert 'id="drift-empty"' in page and 'id="drift-alert"' not in page
    assert "0 sampled records for the next check" in page


def test_retrain_queues_the_train_job_for_engineers_only(
        panel: Any, home: Path, redis_server: RedisServer) -> None:
    from app.extensions import db

    drifted(panel, home, redis_server)

    def queued() -> list[Job]:
        with panel.app_context():
            return list(db.session.query(Job).all())

    bob = client_for(panel, "bob")
    assert bob.post("/drift/staging/retrain", headers=csrf_headers(bob)).status_code == 403
    assert queued() == []
    alice = client_for(panel, "alice")
    response = alice.post("/drift/staging/retrain", headers=csrf_headers(alice))
    assert response.status_code == 302
    [job] = queued()
    assert (job.kind, job.status, job.requested_by, job.params) == (
        "train", "QUEUED", "alice", {})
    assert response.headers["Location"].endswith(f"/jobs/{job.id}")
    # Without the CSRF token nothing is queued.
    assert alice.post("/drift/staging/retrain").status_code == 400
    assert len(queued()) == 1


def test_the_timeline_shows_the_drift_event(panel: Any, home: Path,
                                            redis_server: RedisServer) -> None:
    drifted(panel, home, redis_server)
    page = client_for(panel, "carol").get("/audit/timeline?environment=staging").get_data(
        as_text=True)
    assert 'data-kind="drift" data-action="model.drift" data-version="1"' in page
    assert "drift detected" in page and 'href="/drift/staging"' in page


def test_the_rest_api_answers_the_checks(panel: Any, home: Path,
                                         redis_server: RedisServer) -> None:
    drifted(panel, home, redis_server)
    alice = client_for(panel, "alice")
    body = alice.get("/api/v1/drift/staging").get_json()
    assert body["environment"] == "staging" and body["pending"] == 0
    first, second = body["checks"]
    assert (first["band"], second["band"]) == ("stable", "act")
    assert second["model"] == {"name": "german-credit", "version": "1"}
    assert [f["field"] for f in second["fields"]] == list(FIELDS[:-1])
    assert second["score"]["field"] == "P(bad)" and second["score"]["bins"]
    assert {c["field"] for c in second["crossed"]} >= {"Age", "Credit amount"}
    assert [c["check_id"] for c in alice.get("/api/v1/drift/staging?limit=1").get_json()[
        "checks"]] == [second["check_id"]]
    assert alice.get("/api/v1/drift/staging?limit=0").status_code == 422
    assert alice.get("/api/v1/drift/nowhere").status_code == 404
    assert client_for(panel, "carol").get("/api/v1/drift/staging").status_code == 403
    assert client_for(panel, "bob").get("/api/v1/drift/staging").status_code == 200
    paths = panel.test_client().get("/api/v1/openapi.json").get_json()["paths"]
    assert "/drift/{environment}" in paths
