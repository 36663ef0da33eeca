"""Which version served prod at time T, across two promotions and a rollback; the timeline."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from app.services import promotions, rollbacks, timeline
from tests.approvals.conftest import record_deploy
from tests.conftest import USERS

ROLES = {name: frozenset(roles) for name, roles in USERS.items()}


def _now() -> dt.datetime:
    time.sleep(0.02)  # distinct timestamps between the steps
    return dt.datetime.now(dt.UTC)


def _promote(home: Path, version: str) -> str:
    """alice requests, bob approves, the deploy job's records follow (as rollout.py writes)."""
    row = promotions.request(version, "prod", f"promote v{version}", "alice",
                             roles=ROLES["alice"])
    approved = promotions.approve(row.id, "bob", roles=ROLES["bob"], comment="ok")
    assert approved.deploy_job_id
    record_deploy(home, "prod", version, approved.deploy_job_id, actor="bob")
    return approved.deploy_job_id


def test_served_version_across_two_promotions_and_a_rollback(app: Any, tmp_path: Path) -> None:
    t0 = _now()
    job1 = _promote(tmp_path, "1")
    t1 = _now()
    job2 = _promote(tmp_path, "2")
    t2 = _now()
    rollback_job = rollbacks.rollback("prod", None, "v2 regressed", "alice",
                                      roles=ROLES["alice"])
    assert rollback_job.params == {"environment": "prod", "version": "1"}
    t_queued = _now()
    record_deploy(tmp_path, "prod", "1", rollback_job.id, actor="alice")
    t3 = _now()

    def served(at: dt.datetime) -> str | None:
        return timeline.served_version_at("prod", at).model_version

    assert served(t0) is None
    assert served(t1) == "1"
    assert served(t2) == "2"
    assert served(t_queued) == "2"  # a queued rollback changes nothing until traffic switches
    assert served(t3) == "1"
    assert timeline.served_version_at("staging", t3).model_version is None
    answer = timeline.served_version_at("prod", t2)
    assert answer.since is not None and t1 < answer.since < t2 and answer.event_id

    steps = [(e.action, e.model_version) for e in timeline.entries(environment="prod")]
    assert steps == [
        ("promotion.requested", "1"), ("promotion.approved", "1"),
        ("deployment.traffic-switched", "1"), ("deployment.deployed", "1"),
        ("promotion.requested", "2"), ("promotion.approved", "2"),
        ("deployment.traffic-switched", "2"), ("deployment.deployed", "2"),
        ("deployment.rolled-back", "1"),
        ("deployment.traffic-switched", "1"), ("deployment.deployed", "1"),
    ]
    jobs = [e.details.get("job_id") or e.details.get("deploy_job_id")
            for e in timeline.entries(environment="prod")]
    assert job1 in jobs and job2 in jobs and rollback_job.id in jobs


def test_version_filter_keeps_changes_made_while_it_served(app: Any, tmp_path: Path) -> None:
    from app.services import audit
    from app.services.audit import AuditAction

    record_deploy(tmp_path, "prod", "1", "job-1")
    audit.record("alice", AuditAction.KEYS_ROTATED, "environment:prod", {"slot": "blue"})
    record_deploy(tmp_path, "prod", "2", "job-2")
    audit.record("alice", AuditAction.API_PUBLISHED, "api:credit-risk",
                 {"revision": 4, "environment": "prod"})
    v1 = [e.action for e in timeline.entries(model_version="1")]
    assert v1 == ["deployment.traffic-switched", "deployment.deployed", "keys.rotated"]
    v2 = [e.action for e in timeline.entries(model_version="2")]
    assert v2 == ["deployment.traffic-switched", "deployment.deployed", "api.published"]


def test_calls_per_version_per_bucket_from_the_gateway_log(app: Any, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "gateway-requests.jsonl"
    log.parent.mkdir(parents=True)
    base = dt.datetime(2026, 11, 25, 10, 0, 0, tzinfo=dt.UTC)
    records = [(0, "1", 200), (30, "1", 200), (60, "1", 502), (90, "1", 403),
               (400, "2", 200), (410, "2", 200), (420, None, 401)]
    with log.open("w") as fh:
        for offset, version, status in records:
            fh.write(json.dumps({"time": (base + dt.timedelta(seconds=offset)).isoformat(),
                                 "caller": "c", "api": "credit-risk", "revision": 1,
                                 "environment": "prod", "status": status, "latency_ms": 1.0,
                                 "backend_ms": 1.0, "model_version": version,
                                 "request_id": "r"}) + "\n")
        fh.write('{"time": "cut off mid-li')
    buckets = [(b.start.minute, b.model_version, b.calls, b.errors, b.rejected)
               for b in timeline.calls(environment="prod")]
    assert buckets == [(0, "1", 4, 1, 1), (5, "2", 2, 0, 0), (5, "unknown", 1, 0, 1)]
    assert timeline.calls(environment="staging") == []
    assert [b.model_version for b in timeline.calls(model_version="2")] == ["2"]


def test_timeline_page_answers_served_at(app: Any, tmp_path: Path) -> None:
    from tests.approvals.conftest import client_for

    record_deploy(tmp_path, "prod", "1", "job-1")
    at = _now()
    record_deploy(tmp_path, "prod", "2", "job-2")
    client = client_for(app, "erin")
    page = client.get(f"/audit/timeline?environment=prod&at={at.strftime('%Y-%m-%dT%H:%M:%S.%f')}"
                      ).get_data(as_text=True)
    assert 'id="served-answer" data-version="1"' in page
    assert page.index('data-version="1"') < page.index('data-version="2"')
    bad = client.get("/audit/timeline?at=yesterday").get_data(as_text=True)
    assert "give a time like" in bad
