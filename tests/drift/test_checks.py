"""Drift checks on a real Redis and database: the shifted population acts, a band crossing is a
drift event on the timeline and a webhook, few samples wait, baselines of older versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.db import AuditEvent, DriftBaseline, DriftCheck
from app.ml.drift import SCORE_FIELD, Baseline
from app.serving.sampling import store_key
from tests.approvals.test_webhooks import SECRET, Hook
from tests.conftest import build_app
from tests.drift.conftest import MIN_SAMPLES, applicants, shifted, store_samples
from tests.support import RedisServer, WorkerProcess, child_env, wait_for


def drift_events() -> list[AuditEvent]:
    from app.extensions import db

    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == "model.drift")
                                   .order_by(AuditEvent.id)))


def test_a_shifted_population_acts_and_is_on_the_timeline(app: Any, home: Path,
                                                          redis_server: RedisServer) -> None:
    from app.services import drift, timeline

    people = applicants()
    assert store_samples(home, redis_server.url, "staging", shifted(people[:300])) == 300
    [row] = drift.check_environment("staging")
    fields = {f["field"]: f for f in row.fields}
    assert (row.model_name, row.model_version, row.samples) == ("german-credit", "1", 300)
    assert fields["Age"]["band"] == "act" and fields["Credit amount"]["band"] == "act"
    # Untouched fields of the same applicants stay stable.
    for name in ("Sex", "Housing", "Purpose", "Job"):
        assert fields[name]["band"] == "stable", fields[name]
    assert row.band == "act"
    assert {c["field"] for c in row.crossed} >= {"Age", "Credit amount"}
    assert all(c["from"] == "stable" for c in row.crossed)
    # The PSI stored is the PSI of the bins stored with it.
    age = fields["Age"]
    from app.ml.drift import psi

    assert age["psi"] == pytest.approx(psi([b["expected"] for b in age["bins"]],
                                           [b["actual"] for b in age["bins"]]))
    # The sample was taken: the store is empty again.
    assert redis_server.client().llen(store_key("staging")) == 0

    [event] = drift_events()
    assert (event.actor, event.target) == ("modelgate", "environment:staging")
    assert event.details["model_version"] == "1" and event.details["check_id"] == row.id
    steps = timeline.entries(environment="staging")
    assert [(s.kind, s.action, s.model_version) for s in steps] == [
        ("drift", "model.drift", "1")]

    # The same drift again: the bands did not rise, so no new event.
    store_samples(home, redis_server.url, "staging", shifted(people[300:600]))
    [again] = drift.check_environment("staging")
    assert again.band == "act" and again.crossed == []
    assert len(drift_events()) == 1
    # The next environment's store is its own.
    assert drift.check_environment("prod") == []


def test_the_unshifted_population_is_stable(app: Any, home: Path,
                                            redis_server: RedisServer) -> None:
    from app.services import drift

    store_samples(home, redis_server.url, "prod", applicants()[:600])
    [row] = drift.check_environment("prod")
    assert {f["field"]: f["band"] for f in row.fields} == {
        name: "stable" for name in ("Age", "Sex", "Job", "Housing", "Saving accounts",
                                    "Checking account", "Credit amount", "Duration",
                                    "Purpose")}
    # (P(bad) of records the model was trained on may differ from its held-out P(bad).)
    assert {c["field"] for c in row.crossed} <= {SCORE_FIELD}


def test_fewer_samples_than_the_minimum_wait(app: Any, home: Path,
                                             redis_server: RedisServer) -> None:
    from app.services import drift

    store_samples(home, redis_server.url, "staging", shifted(applicants()[:MIN_SAMPLES - 1]))
    assert drift.check_environment("staging") == []
    assert redis_server.client().llen(store_key("staging")) == MIN_SAMPLES - 1
    store_samples(home, redis_server.url, "staging", shifted(applicants()[:1]))
    [row] = drift.check_environment("staging")
    assert row.samples == MIN_SAMPLES


def test_a_version_without_baseline_json_gets_one_from_its_registered_data(
        app: Any, home: Path, redis_server: RedisServer) -> None:
    from app.extensions import db
    from app.services import drift

    package = home / "models" / "german-credit" / "1"
    stored = Baseline.from_dict(json.loads((package / "baseline.json").read_text()))
    (package / "baseline.json").unlink()  # as packages written before baselines existed
    computed = drift.baseline_for("german-credit", "1")
    assert computed.source == "registered data"
    assert (computed.fields, computed.score) == (stored.fields, stored.score)
    kept = db.session.get(DriftBaseline, ("german-credit", "1"))
    assert kept is not None and kept.source == "registered data"


def test_samples_wait_when_a_baseline_is_unavailable(app: Any, home: Path,
                                                     redis_server: RedisServer) -> None:
    from app.services import drift

    store_samples(home, redis_server.url, "staging", shifted(applicants()[:80]))
    before = redis_server.client().lrange(store_key("staging"), 0, -1)
    package = home / "models" / "german-credit" / "1"
    (package / "baseline.json").unlink()
    (home / "datasets").rename(home / "datasets-gone")  # nor can it be computed
    with pytest.raises(drift.DriftError, match="no drift baseline"):
        drift.check_environment("staging")
    assert redis_server.client().lrange(store_key("staging"), 0, -1) == before
    # The beat task logs the failing environment and checks the others.
    assert drift.run_checks() == {"prod": []}
    assert redis_server.client().lrange(store_key("staging"), 0, -1) == before
    (home / "datasets-gone").rename(home / "datasets")
    [row] = drift.check_environment("staging")
    assert row.samples == 80


def test_a_version_without_baseline_waits_the_others_are_checked(
        app: Any, home: Path, redis_server: RedisServer) -> None:
    from app.services import drift

    store_samples(home, redis_server.url, "staging", shifted(applicants()[:60]), labelled="9")
    store_samples(home, redis_server.url, "staging", shifted(applicants()[60:160]))
    with pytest.raises(drift.DriftError, match="german-credit v9"):
        drift.check_environment("staging")
    [row] = drift.history("staging")
    assert (row.model_version, row.samples) == ("1", 100)
    waiting = drift.stored_samples("staging")
    assert len(waiting) == 60 and {r["version"] for r in waiting} == {"9"}


def test_a_band_crossing_is_sent_to_the_model_drift_webhook(
        home: Path, tmp_path: Path, redis_server: RedisServer, pipeline_file: Path) -> None:
    from app.services import drift

    database = f"sqlite:///{tmp_path / 'panel.db'}"
    with Hook([]) as server:
        hooks = {"model.drift": server.url}
        app = build_app(home, database, redis_server.url, WEBHOOKS=hooks,
                        WEBHOOK_SECRET=SECRET, PANEL_URL="http://panel.test")
        worker = WorkerProcess(home, child_env(
            home, database, redis_server.url, WEBHOOKS=json.dumps(hooks),
            WEBHOOK_SECRET=SECRET, PIPELINE_CONFIG=str(pipeline_file)), concurrency=1).start()
        try:
            store_samples(home, redis_server.url, "staging", shifted(applicants()[:200]))
            with app.app_context():
                [row] = drift.check_environment("staging")
                check_id = row.id
            wait_for(lambda: server.received, 30, "the model.drift webhook")
            # Checked again with the same drift: nothing crossed, nothing sent.
            store_samples(home, redis_server.url, "staging", shifted(applicants()[200:400]))
            with app.app_context():
                [second] = drift.check_environment("staging")
                assert second.crossed == []
        finally:
            worker.stop()
    assert len(server.received) == 1
    headers, body = server.received[0]
    event = json.loads(body)
    assert event["type"] == headers["X-Modelgate-Event"] == "model.drift"
    data = event["data"]
    assert data["environment"] == "staging" and data["check_id"] == check_id
    assert data["model"] == {"name": "german-credit", "version": "1"}
    assert data["band"] == "act" and data["samples"] == 200
    assert data["fields"]["Age"]["band"] == "act"
    assert {c["field"] for c in data["crossed"]} >= {"Age", "Credit amount"}
    assert data["url"] == "http://panel.test/drift/staging"
    with app.app_context():
        from app.extensions import db

        assert db.session.get(DriftCheck, check_id) is not None
