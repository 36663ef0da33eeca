"""API revisions in the database on SQLite and PostgreSQL: numbering, one current revision,
idempotent redelivery, refusal leaves nothing behind, rollback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.errors import Conflict
from tests.conftest import build_app

BAD = "<policies><inbound><base /><send-request /></inbound></policies>"


def _gateway_revision(home: Path) -> int:
    config = json.loads((home / "gateway" / "config.json").read_text())
    return int(next(a for a in config["apis"] if a["name"] == "credit-risk")["revision"])


def test_revisions_on_both_databases(tmp_path: Path, redis_server: Any,
                                     database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.backends.local import gateway as gateway_config
    from app.db import ApiRevision, Deployment, DeploymentState
    from app.extensions import db
    from app.services import apis

    # The revision mechanics on prod's API name, with prod not marked protected (a protected
    # prod refuses the direct rollback below: tests/approvals/test_protected.py).
    unprotected = tmp_path / "pipeline.yml"
    unprotected.write_text("environments:\n  prod: {protected: false}\n")
    monkeypatch.setenv("MODELGATE_PIPELINE_CONFIG", str(unprotected))
    app = build_app(tmp_path, database_url, redis_server.url)
    with app.app_context():
        with pytest.raises(apis.PublishRefused, match="prod has no active deployment"):
            apis.publish(environment="prod", policy_xml="<policies/>", actor="alice")
        db.session.add(Deployment(environment="prod", slot="blue", model_name="german-credit",
                                  model_version="1", state=DeploymentState.ACTIVE, port=9,
                                  primary_key_enc="x", secondary_key_enc="y"))
        db.session.commit()
        gateway_config.set_backend(tmp_path, "prod", "http://127.0.0.1:9", "k")
        policy = apis.render_policy(app.config, "prod", rate_limit=10)

        first = apis.publish(environment="prod", policy_xml=policy, actor="alice",
                             job_id="job1")
        again = apis.publish(environment="prod", policy_xml=policy, actor="alice",
                             job_id="job1")  # a redelivered job reuses its revision
        assert (first.id, first.revision) == (again.id, 1)
        second = apis.publish(environment="prod", policy_xml=policy, actor="bob",
                              job_id="job2")
        assert second.revision == 2 and _gateway_revision(tmp_path) == 2
        assert (second.path, second.api_name) == ("credit-risk", "credit-risk")

        with pytest.raises(apis.PublishRefused, match="<send-request>"):
            apis.publish(environment="prod", policy_xml=BAD, actor="alice",
                         job_id="job3")
        rows = db.session.query(ApiRevision).order_by(ApiRevision.revision).all()
        assert [(r.revision, r.is_current) for r in rows] == [(1, False), (2, True)]

        back = apis.rollback(first.id, "carol")
        assert back.revision == 1 and _gateway_revision(tmp_path) == 1
        assert [r.revision for r in apis.list_current()] == [1]
        with pytest.raises(Conflict):
            apis.rollback(first.id, "carol")
        assert apis.to_dict(back, "https://gw:1")["url"] == "https://gw:1/credit-risk"


KEY_ONLY = ('<policies><inbound><set-header name="Authorization" exists-action="override">'
            "<value>Bearer {{prod-backend-key}}</value></set-header></inbound></policies>")


def test_13_pipeline_file_declarations_decide_publish_and_rollback(
        tmp_path: Path, redis_server: Any, sqlite_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An anonymous policy publishes only while the pipeline file declares the API anonymous;
    once the declaration is gone, rolling back to that stored revision is refused."""
    from app.backends.local import gateway as gateway_config
    from app.db import Deployment, DeploymentState
    from app.extensions import db
    from app.services import apis

    # prod not protected in either file: a protected prod refuses the direct rollback before
    # the safety rule is reached (tests/approvals/test_protected.py).
    undeclared = tmp_path / "undeclared.yml"
    undeclared.write_text("environments:\n  prod: {protected: false}\n")
    declared = tmp_path / "pipeline.yml"
    declared.write_text("environments:\n  prod: {protected: false}\n"
                        "gateway:\n  anonymous_apis: [credit-risk]\n")
    monkeypatch.setenv("MODELGATE_PIPELINE_CONFIG", str(undeclared))
    app = build_app(tmp_path, sqlite_url, redis_server.url)
    with app.app_context():
        db.session.add(Deployment(environment="prod", slot="blue", model_name="german-credit",
                                  model_version="1", state=DeploymentState.ACTIVE, port=9,
                                  primary_key_enc="x", secondary_key_enc="y"))
        db.session.commit()
        gateway_config.set_backend(tmp_path, "prod", "http://127.0.0.1:9", "k")
        with pytest.raises(apis.PublishRefused, match="gateway.anonymous_apis"):
            apis.publish(environment="prod", policy_xml=KEY_ONLY, actor="alice")

        monkeypatch.setenv("MODELGATE_PIPELINE_CONFIG", str(declared))
        anonymous = apis.publish(environment="prod", policy_xml=KEY_ONLY,
                                 actor="alice")
        entry = gateway_config.read(tmp_path)["apis"][0]
        assert (entry["revision"], entry["anonymous"]) == (anonymous.revision, True)
        apis.publish(environment="prod", actor="alice",
                     policy_xml=apis.render_policy(app.config, "prod"))

        monkeypatch.setenv("MODELGATE_PIPELINE_CONFIG", str(undeclared))
        with pytest.raises(apis.PublishRefused, match="would serve anonymous callers"):
            apis.rollback(anonymous.id, "alice")
        assert _gateway_revision(tmp_path) == anonymous.revision + 1
        assert [r.revision for r in apis.list_current()] == [anonymous.revision + 1]
