"""Fixtures for promotions: a panel on SQLite and PostgreSQL with a real Redis, registry
versions at the MLflow boundary, and deploys recorded as the deploy job records them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from tests.conftest import build_app, sign_in
from tests.support import RedisServer

# Metrics per registered version (what MLflow would answer for each version's run).
VERSIONS: dict[str, dict[str, float]] = {
    "1": {"roc_auc": 0.70, "f1": 0.50},
    "2": {"roc_auc": 0.74, "f1": 0.55},
    "3": {"roc_auc": 0.78, "f1": 0.58},
}


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, float]]:
    """Registry reads answered from VERSIONS (the MLflow boundary; no training in these tests)."""
    from app.errors import NotFound
    from app.ml.registry import ModelVersionInfo
    from app.services import models

    def info(name: str, version: str) -> ModelVersionInfo:
        if version not in VERSIONS:
            raise NotFound(f"model {name!r} has no version {version!r}")
        return ModelVersionInfo(name=name, version=version, run_id=f"run-{version}",
                                status="READY", created_at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
                                source="", metrics=MappingProxyType(VERSIONS[version]))

    monkeypatch.setattr(models, "get_version", info)
    monkeypatch.setattr(models, "list_versions",
                        lambda name: [info(name, v) for v in sorted(VERSIONS, reverse=True)])
    return VERSIONS


@pytest.fixture
def app(tmp_path: Path, database_url: str, redis_server: RedisServer,
        fake_registry: dict[str, Any]) -> Iterator[Any]:
    panel = build_app(tmp_path, database_url, redis_server.url)
    with panel.app_context():
        yield panel


def client_for(app: Any, user: str) -> Any:
    client = app.test_client()
    sign_in(client, user)
    return client


def record_deploy(home: Path, environment: str, version: str, job_id: str,
                  actor: str = "bob") -> str:
    """Record a finished blue/green deploy exactly as the deploy job does (rollout.py)."""
    from app.services import audit, deployments
    from app.services.audit import AuditAction

    row = deployments.create_slot(home, environment=environment, model_name="german-credit",
                                  model_version=version, replicas=1, resources={},
                                  job_id=job_id)
    replaced = deployments.activate(row.id)
    audit.record("modelgate", AuditAction.TRAFFIC_SWITCHED, f"environment:{environment}",
                 {"deployment": row.id, "slot": row.slot, "model_version": version,
                  "url": "http://127.0.0.1:1", "replaced": replaced, "job_id": job_id})
    deployments.stop(replaced)
    audit.record(actor, AuditAction.DEPLOYED, f"environment:{environment}",
                 {"deployment": row.id, "slot": row.slot, "model": "german-credit",
                  "model_version": version, "job_id": job_id})
    return row.id
