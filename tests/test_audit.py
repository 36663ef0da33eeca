"""The audit trail: hash chain, tamper detection (CLI too), redaction, concurrent appends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app.services import audit
from app.services.audit import AuditAction
from tests.conftest import build_app
from tests.support import ROOT


@pytest.fixture
def app(tmp_path: Path, database_url: str) -> Any:
    return build_app(tmp_path, database_url, "redis://127.0.0.1:1/0")


def _fill(app: Any, n: int = 5) -> None:
    with app.app_context():
        for i in range(n):
            audit.record("alice", AuditAction.JOB_QUEUED, f"job:{i}", {"kind": "train", "i": i})


def test_chain_verifies_and_exports(app: Any) -> None:
    _fill(app, 5)
    with app.app_context():
        report = audit.verify()
        assert report.ok and report.checked == 5
        lines = [json.loads(line) for line in audit.export_jsonl()]
        assert [e["id"] for e in lines] == [1, 2, 3, 4, 5]
        assert lines[0]["prev_hash"] == audit.GENESIS
        assert all(b["prev_hash"] == a["hash"] for a, b in zip(lines, lines[1:], strict=False))
        csv_text = "".join(audit.export_csv())
        assert csv_text.splitlines()[0] == "id,time,actor,action,target,details,prev_hash,hash"
        assert len(csv_text.splitlines()) == 6


def test_secrets_are_redacted_before_hashing(app: Any) -> None:
    with app.app_context():
        event = audit.record("dave", AuditAction.KEYS_ROTATED, "env:prod",
                             {"primary_key": "s3cr3t-value", "client_secret": "x",
                              "nested": {"access_token": "eyJ..."}, "slot": "green"})
        assert event.details == {"primary_key": "[redacted]", "client_secret": "[redacted]",
                                 "nested": {"access_token": "[redacted]"}, "slot": "green"}
        assert "s3cr3t" not in "".join(audit.export_jsonl())
        assert audit.verify().ok


@pytest.mark.parametrize("tamper,broken", [
    ("UPDATE audit_events SET details = '{\"kind\": \"deploy\", \"i\": 2}' WHERE id = 3", 3),
    ("UPDATE audit_events SET actor = 'mallory' WHERE id = 2", 2),
    ("DELETE FROM audit_events WHERE id = 4", 5),
    ("DELETE FROM audit_events WHERE id = 5", 5),
])
def test_tampering_is_detected_and_names_the_row(app: Any, tamper: str, broken: int) -> None:
    _fill(app, 5)
    with app.app_context():
        from app.extensions import db

        db.session.execute(text(tamper))
        db.session.commit()
        report = audit.verify()
    assert not report.ok
    assert report.broken_id == broken


def test_cli_verify_exits_non_zero_naming_the_edited_row(tmp_path: Path, sqlite_url: str) -> None:
    app = build_app(tmp_path, sqlite_url, "redis://127.0.0.1:1/0")
    _fill(app, 4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    env.update({"MODELGATE_HOME": str(tmp_path), "MODELGATE_DATABASE_URL": sqlite_url,
                "MODELGATE_SECRET_KEY": "k" * 40})
    ok = subprocess.run([sys.executable, "-m", "app", "audit", "verify"], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "4 events verified" in ok.stdout
    with app.app_context():
        from app.extensions import db

        db.session.execute(text("UPDATE audit_events SET target = 'job:99' WHERE id = 2"))
        db.session.commit()
    bad = subprocess.run([sys.executable, "-m", "app", "audit", "verify"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "BROKEN at event 2" in bad.stderr


def test_concurrent_appends_keep_one_chain(app: Any) -> None:
    errors: list[BaseException] = []

    def append(worker: int) -> None:
        try:
            with app.app_context():
                for i in range(15):
                    audit.record(f"w{worker}", AuditAction.JOB_QUEUED, f"job:{worker}-{i}")
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with app.app_context():
        report = audit.verify()
    assert report.ok, report
    assert report.checked == 90
