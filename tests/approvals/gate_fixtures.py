"""Fixtures for the promotion gate: two real versions, one trained to fail the gate.

v1 is gradient boosting on the real CSV; v2 is the same family on a skewed sample in which
women who repaid are under-represented (a quarter of them kept) and women who defaulted are
counted twice, so the model learns to refuse women. The pipeline file's gate asks for a
selection-rate ratio by sex of at least 0.6: v1 meets it, v2 approves no woman at all.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import build_app
from tests.support import RedisServer

CSV = Path(__file__).resolve().parents[2] / "data" / "german_credit_data.csv"
MODEL_NAME = "german-credit"
FAIRNESS = {"groups": {"sex": {"column": "Sex"}}, "min_group_size": 30}
GATE = {"min_heldout_auc": 0.7, "min_selection_rate_ratio": 0.6, "max_equalized_odds_gap": 0.2}
PIPELINE_YAML = f"""\
fairness: {FAIRNESS}
gate: {GATE}
"""
TRAINING = {"cv_folds": 2, "importance_repeats": 1, "fairness": FAIRNESS,
            "candidates": [{"family": "gradient_boosting"}]}


def skewed_sample(target: Path) -> Path:
    """The CSV with women who repaid under-represented and women who defaulted doubled."""
    import pandas as pd

    df = pd.read_csv(CSV, keep_default_na=False, dtype=str)  # written back byte-for-byte
    women = df["Sex"] == "female"
    repaid = df["Risk"] == "good"
    skewed = pd.concat([df[~women], df[women & repaid].iloc[::4], df[women & ~repaid],
                        df[women & ~repaid]])
    skewed.to_csv(target, index=False)
    return target


def sex_ratio(report: dict[str, Any]) -> float | None:
    """The selection-rate ratio by sex of a fairness report."""
    sex = next(a for a in report["attributes"] if a["name"] == "sex")
    return sex["summary"]["selection_rate"]["ratio"]  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def gate_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Train v1 (fair enough) and v2 (skewed) once per session, as train jobs would."""
    from app.ml.workflow import train_and_register

    home = tmp_path_factory.mktemp("gate-registry")
    fair = train_and_register(home, CSV, job_id="train-fair", config=TRAINING,
                              materialise=False)
    skewed = train_and_register(home, skewed_sample(home / "skewed.csv"), job_id="train-skewed",
                                config=TRAINING, materialise=False)
    assert (fair.model.version, skewed.model.version) == ("1", "2")
    reports = {"1": fair.outcome.fairness, "2": skewed.outcome.fairness}
    # The premise of every gate test: v1 passes the fairness threshold, v2 fails it.
    assert (sex_ratio(reports["1"]) or 0) >= GATE["min_selection_rate_ratio"], reports["1"]
    assert sex_ratio(reports["2"]) == 0.0, reports["2"]
    assert fair.outcome.heldout["roc_auc"] >= GATE["min_heldout_auc"]
    return home / "mlflow" / "mlflow.db", reports


@pytest.fixture
def gate_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's pipeline file: the gate above, fairness by sex."""
    path = tmp_path / "pipeline.yml"
    path.write_text(PIPELINE_YAML)
    monkeypatch.setenv("MODELGATE_PIPELINE_CONFIG", str(path))
    return path


@pytest.fixture
def gate_versions(tmp_path: Path, gate_store: tuple[Path, dict[str, Any]],
                  gate_pipeline: Path) -> dict[str, Any]:
    """This test's MODELGATE_HOME gets a copy of the session's MLflow store (v1, v2); the
    runs' artifacts stay in the session store, where the runs point."""
    source, reports = gate_store
    target = tmp_path / "mlflow" / "mlflow.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
    return reports


@pytest.fixture
def gate_app(tmp_path: Path, database_url: str, redis_server: RedisServer,
             gate_versions: dict[str, Any]) -> Any:
    """The panel (on SQLite and PostgreSQL); no app context is held, so each request gets
    its own (g caches the CSRF token): tests open one around direct service calls."""
    return build_app(tmp_path, database_url, redis_server.url)
