"""The promotion state machine: every transition, the refused ones, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import update

from app.db import Job, Promotion
from app.errors import Conflict, Forbidden, ValidationError
from app.extensions import db
from app.services import audit, promotions
from app.services.promotions import TRANSITIONS, PromotionState
from tests.approvals.conftest import record_deploy
from tests.conftest import USERS

ROLES = {name: frozenset(roles) for name, roles in USERS.items()}


def _request(version: str = "2", who: str = "alice", reason: str = "better AUC") -> Promotion:
    return promotions.request(version, "prod", reason, who, roles=ROLES[who])


def _actions(target: str) -> list[str]:
    return [e.action for e in reversed(audit.events(target=target))]


def test_transition_table_has_one_way_out_of_pending() -> None:
    assert TRANSITIONS[PromotionState.PENDING] == {
        PromotionState.APPROVED, PromotionState.REJECTED, PromotionState.EXPIRED,
        PromotionState.SUPERSEDED}
    assert all(not TRANSITIONS[s] for s in PromotionState if s.is_final)


def test_request_records_evidence_against_prod(app: Any, tmp_path: Any,
                                               registered_versions: dict[str, Any]) -> None:
    v1, v2 = registered_versions["1"], registered_versions["2"]
    record_deploy(tmp_path, "prod", "1", "job-prod-1")
    row = _request("2")
    assert row.state == PromotionState.PENDING
    assert row.evidence["candidate"]["metrics"] == v2 and "roc_auc" in v2
    current = dict(row.evidence["current"])
    # prod's fairness report sits beside the candidate's (tests/approvals/test_gate.py)
    assert [a["name"] for a in current.pop("fairness")["attributes"]] == ["sex", "age"]
    assert current == {"version": "1", "metrics": v1}
    assert row.evidence["staging"]["serving"] is False
    with pytest.raises(ValidationError, match="already serves v1"):
        _request("1")
    rows = {r["name"]: r for r in promotions.metric_rows(row.evidence)}
    assert (rows["roc_auc"]["candidate"], rows["roc_auc"]["current"]) \
        == (v2["roc_auc"], v1["roc_auc"])
    assert rows["roc_auc"]["delta"] == pytest.approx(v2["roc_auc"] - v1["roc_auc"])
    expected_ttl = dt.timedelta(hours=72)
    assert abs((row.expires_at - row.requested_at) - expected_ttl) < dt.timedelta(seconds=1)
    assert _actions(f"promotion:{row.id}") == ["promotion.requested"]


def test_only_engineers_and_admins_request(app: Any) -> None:
    for who in ("bob", "carol", "erin"):
        with pytest.raises(Forbidden):
            _request(who=who)
    assert _request(who="dave").state == PromotionState.PENDING


BAD_REQUESTS = [("9", "prod", "x"), ("abc", "prod", "x"), (None, "prod", "x"),
                ("2", "staging", "x"), ("2", "prod", ""), ("2", "prod", "   "),
                ("2", "prod", "r" * 2001), ("2", "prod", None)]


def test_bad_requests_are_refused(app: Any) -> None:
    for version, environment, reason in BAD_REQUESTS:
        with pytest.raises(ValidationError):
            promotions.request(version, environment, reason, "alice", roles=ROLES["alice"])
    assert promotions.list_promotions() == []


def test_approve_queues_the_prod_deploy(app: Any) -> None:
    row = _request("3")
    done = promotions.approve(row.id, "bob", roles=ROLES["bob"], comment="looks good")
    assert done.state == PromotionState.APPROVED
    assert (done.decided_by, done.comment) == ("bob", "looks good")
    job = db.session.get(Job, done.deploy_job_id)
    assert job is not None and job.kind == "deploy" and job.status == "QUEUED"
    assert job.params == {"environment": "prod", "version": "3"}
    events = audit.events(target=f"promotion:{row.id}")
    assert [e.action for e in reversed(events)] == ["promotion.requested", "promotion.approved"]
    assert events[0].details["deploy_job_id"] == job.id
    assert events[0].actor == "bob"


def test_reject_closes_the_request(app: Any) -> None:
    row = _request()
    done = promotions.reject(row.id, "bob", roles=ROLES["bob"], comment="not yet")
    assert done.state == PromotionState.REJECTED and done.deploy_job_id is None
    assert _actions(f"promotion:{row.id}") == ["promotion.requested", "promotion.rejected"]
    for decide in (promotions.approve, promotions.reject):
        with pytest.raises(Conflict):
            decide(row.id, "dave", roles=ROLES["dave"])
    assert db.session.query(Job).count() == 0


@pytest.mark.parametrize("requester,roles", [
    ("dave", ROLES["dave"]), ("frank", frozenset({"MLOps.Engineer", "MLOps.Approver"}))])
def test_self_approval_is_refused_even_for_admins(app: Any, requester: str,
                                                  roles: frozenset[str]) -> None:
    row = promotions.request("2", "prod", "mine", requester, roles=roles)
    for decide in (promotions.approve, promotions.reject):
        with pytest.raises(Forbidden, match="someone else"):
            decide(row.id, requester, roles=roles)
    assert promotions.get(row.id).state == PromotionState.PENDING


def test_deciding_without_the_role_is_refused(app: Any) -> None:
    row = _request(who="dave")
    for who in ("alice", "carol", "erin"):
        for decide in (promotions.approve, promotions.reject):
            with pytest.raises(Forbidden, match="MLOps.Approver"):
                decide(row.id, who, roles=ROLES[who])
    assert promotions.get(row.id).state == PromotionState.PENDING


def test_admin_may_approve_someone_elses_request(app: Any) -> None:
    row = _request()
    assert promotions.approve(row.id, "dave", roles=ROLES["dave"]).state == "APPROVED"


def test_approving_twice_is_a_conflict(app: Any) -> None:
    row = _request()
    promotions.approve(row.id, "bob", roles=ROLES["bob"])
    with pytest.raises(Conflict, match="APPROVED"):
        promotions.approve(row.id, "dave", roles=ROLES["dave"])
    assert db.session.query(Job).count() == 1


def test_newer_request_supersedes_older_pending_ones(app: Any) -> None:
    decided = _request("1")
    promotions.reject(decided.id, "bob", roles=ROLES["bob"])
    first = _request("2")
    second = _request("3", who="dave")
    old = promotions.get(first.id)
    assert old.state == PromotionState.SUPERSEDED and old.superseded_by == second.id
    assert promotions.get(decided.id).state == PromotionState.REJECTED  # final stays final
    with pytest.raises(Conflict, match="newer request"):
        promotions.approve(first.id, "bob", roles=ROLES["bob"])
    assert _actions(f"promotion:{first.id}") == ["promotion.requested", "promotion.superseded"]
    assert promotions.approve(second.id, "bob", roles=ROLES["bob"]).state == "APPROVED"


def _age(row: Promotion, hours: float) -> None:
    past = row.requested_at - dt.timedelta(hours=hours)
    db.session.execute(update(Promotion).where(Promotion.id == row.id).values(
        requested_at=past, expires_at=past + promotions.ttl()))
    db.session.commit()


def test_expired_request_cannot_be_approved(app: Any) -> None:
    row = _request()
    _age(row, 73)
    with pytest.raises(Conflict, match="expired"):
        promotions.approve(row.id, "bob", roles=ROLES["bob"])
    assert promotions.get(row.id).state == PromotionState.EXPIRED
    assert _actions(f"promotion:{row.id}") == ["promotion.requested", "promotion.expired"]
    assert db.session.query(Job).count() == 0


def test_expiry_pass_and_configurable_ttl(app: Any) -> None:
    app.config["PROMOTION_TTL_HOURS"] = 1
    row = _request()
    fresh = _request(who="dave")  # supersedes row: expire only touches PENDING
    assert abs((fresh.expires_at - fresh.requested_at) - dt.timedelta(hours=1)) \
        < dt.timedelta(seconds=1)
    assert promotions.expire_due() == []
    assert promotions.expire_due(dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)) == [fresh.id]
    assert promotions.get(row.id).state == PromotionState.SUPERSEDED
    assert promotions.pending_count() == 0


def test_pending_first_and_badge_count(app: Any) -> None:
    first = _request()
    promotions.reject(first.id, "bob", roles=ROLES["bob"])
    second = _request("3")
    listed = promotions.list_promotions()
    assert [r.id for r in listed] == [second.id, first.id]
    assert promotions.pending_count() == 1
    assert [r.id for r in promotions.list_promotions(requested_by="dave")] == []


def test_approval_with_the_queue_down_stays_pending(tmp_path: Any, sqlite_url: str,
                                                    registered_versions: Any) -> None:
    from app.errors import ServiceUnavailable
    from tests.conftest import build_app

    panel = build_app(tmp_path, sqlite_url, "redis://127.0.0.1:1/0")
    with panel.app_context():
        row = _request()
        with pytest.raises(ServiceUnavailable):
            promotions.approve(row.id, "bob", roles=ROLES["bob"])
        again = promotions.get(row.id)
        assert again.state == PromotionState.PENDING and again.decided_by is None
        assert _actions(f"promotion:{row.id}") == ["promotion.requested"]


def test_beat_task_expires_overdue_requests(app: Any) -> None:
    from app.config import celery_settings
    from workers.tasks.promotions import expire

    schedule = celery_settings(app.config)["beat_schedule"]["expire-promotions"]
    assert schedule["task"] == expire.name == "modelgate.promotions.expire"
    row = _request()
    assert expire() == []
    _age(row, 80)
    assert expire() == [row.id]
    assert promotions.get(row.id).state == PromotionState.EXPIRED


def test_two_approvers_at_once_approve_once(app: Any) -> None:
    import threading

    row = _request()
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def decide(who: str) -> None:
        with app.app_context():
            barrier.wait()
            try:
                promotions.approve(row.id, who, roles=ROLES[who])
                outcomes.append("approved")
            except Conflict:
                outcomes.append("conflict")

    threads = [threading.Thread(target=decide, args=(who,)) for who in ("bob", "dave")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["approved", "conflict"]
    assert db.session.query(Job).count() == 1
    assert _actions(f"promotion:{row.id}") == ["promotion.requested", "promotion.approved"]
