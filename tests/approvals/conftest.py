"""Fixtures for promotions: a panel on SQLite and PostgreSQL with a real Redis, a real MLflow
registry holding three trained versions, and deploys recorded as the deploy job records them."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import build_app, sign_in
from tests.support import RedisServer

CSV = Path(__file__).resolve().parents[2] / "data" / "german_credit_data.csv"
MODEL_NAME = "german-credit"
# Version → the C of its logistic regression: three real trainings with different
# regularisation, so each version has metrics of its own (2 CV folds and one importance
# repeat keep the three trainings to a few seconds).
VERSION_C: dict[str, float] = {"1": 0.01, "2": 0.1, "3": 1.0}


def _training_config(c: float) -> dict[str, Any]:
    return {"cv_folds": 2, "importance_repeats": 1,
            "candidates": [{"family": "logistic_regression", "params": {"C": c}}]}


@pytest.fixture(scope="session")
def registry_store(tmp_path_factory: pytest.TempPathFactory
                   ) -> tuple[Path, dict[str, dict[str, float]]]:
    """Train and register v1-v3 of german-credit once per session, as train jobs would.

    Returns the store's MLflow database and each version's metrics read back from MLflow.
    """
    from app.ml.registry import ModelRegistry
    from app.ml.workflow import train_and_register

    home = tmp_path_factory.mktemp("approvals-registry")
    for version, c in VERSION_C.items():
        done = train_and_register(home, CSV, job_id=f"train-{version}",
                                  config=_training_config(c), materialise=False)
        assert (done.model.name, done.model.version) == (MODEL_NAME, version)
    registry = ModelRegistry.for_home(home)
    metrics = {v: dict(registry.get_version(MODEL_NAME, v).metrics) for v in VERSION_C}
    # The tests compare versions, so they must differ (to the 4 decimals the pages show).
    shown = {f"{m['roc_auc']:.4f}" for m in metrics.values()}
    assert len(shown) == len(VERSION_C), metrics
    return home / "mlflow" / "mlflow.db", metrics


@pytest.fixture
def registered_versions(tmp_path: Path, registry_store: tuple[Path, dict[str, dict[str, float]]]
                        ) -> dict[str, dict[str, float]]:
    """This test's MODELGATE_HOME gets its own copy of the session's MLflow store (v1-v3).

    The copy is the SQLite tracking/registry database; the runs' artifacts stay in the
    session store, where the runs point (nothing in these tests writes artifacts). Returns
    each version's metrics as MLflow reported them for the session store.
    """
    source, metrics = registry_store
    target = tmp_path / "mlflow" / "mlflow.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)  # a consistent snapshot, whatever MLflow still holds open
    return {version: dict(m) for version, m in metrics.items()}


@pytest.fixture
def app(tmp_path: Path, database_url: str, redis_server: RedisServer,
        registered_versions: dict[str, Any]) -> Iterator[Any]:
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

    row = deployments.create_slot(environment=environment, model_name="german-credit",
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
