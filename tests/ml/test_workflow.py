"""The train job's end-to-end call, and rollback when registration fails half-way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.ml import registry as registry_module
from app.ml.dataset import DatasetError
from app.ml.package import load_package
from app.ml.registry import ModelRegistry, RegistryError
from app.ml.training import TrainingConfig, train
from app.ml.workflow import train_and_register

from .conftest import CSV_SHA256

QUICK: dict[str, Any] = {"candidates": [{"family": "logistic_regression"}], "cv_folds": 3,
                         "importance_repeats": 2}


def test_train_and_register_end_to_end(tmp_path: Path, csv_path: Path) -> None:
    seen: list[tuple[int, str]] = []
    result = train_and_register(tmp_path, csv_path, job_id="job-7", config=QUICK,
                                progress=lambda pct, step: seen.append((pct, step)))
    assert (result.dataset.version, result.dataset_created) == (1, True)
    assert result.model.version == "1"
    assert result.model.tags["job_id"] == "job-7"
    assert result.model.tags["dataset_sha256"] == CSV_SHA256
    assert result.package_path == tmp_path / "models" / "german-credit" / "1"
    pkg = load_package(result.package_path)
    assert pkg.signature.version == "1"
    summary = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert summary["model"]["version"] == "1" and summary["family"] == "logistic_regression"
    # The job result carries the fairness report's headline figures, as the package holds it.
    assert set(summary["fairness"]) == {"sex", "age"} == {
        a["name"] for a in pkg.fairness["attributes"]}
    sex = next(a for a in pkg.fairness["attributes"] if a["name"] == "sex")["summary"]
    assert summary["fairness"]["sex"]["selection_rate_ratio"] == sex["selection_rate"]["ratio"]
    pcts = [p for p, _ in seen]
    assert pcts == sorted(pcts) and pcts[0] == 0 and pcts[-1] == 100

    # No dataset given: the latest registered version is used, nothing is re-registered.
    again = train_and_register(tmp_path, None, job_id="job-8", config=QUICK,
                               materialise=False)
    assert (again.dataset.version, again.dataset_created) == (1, False)
    assert again.model.version == "2" and again.package_path is None


def test_no_registered_dataset_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no version"):
        train_and_register(tmp_path, None, config=QUICK)


def test_failed_package_upload_leaves_no_version(
    tmp_path: Path, csv_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome = train(csv_path, TrainingConfig.from_dict(QUICK))
    reg = ModelRegistry.for_home(tmp_path)

    def broken(*_args: Any, **_kwargs: Any) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(registry_module, "write_package", broken)
    with pytest.raises(RegistryError, match="disk full"):
        reg.log_and_register(outcome, job_id="job-x")
    assert reg.list_versions("german-credit") == []
