"""MLflow round trip in a temporary instance folder (SQLite store, local artifacts)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from app.ml.dataset import register_dataset
from app.ml.predict import features_frame, predict_records
from app.ml.reasons import read_baseline
from app.ml.registry import ModelRegistry, ModelVersionInfo, RegistryError
from app.ml.signature import DESIGN_EXAMPLE
from app.ml.training import CATEGORICAL, NUMERIC, TrainingConfig, TrainingOutcome, train
from app.ml.validation import validate_records

from .conftest import CSV_SHA256

NAME = "german-credit"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def lineage_outcome(home: Path, csv_path: Path, outcome: TrainingOutcome) -> TrainingOutcome:
    """The default model, trained from a registered dataset version so lineage is known."""
    ds = register_dataset(home, csv_path).dataset
    return train(ds.path, TrainingConfig())


@pytest.fixture(scope="module")
def registry(home: Path) -> Iterator[ModelRegistry]:
    yield ModelRegistry.for_home(home)


@pytest.fixture(scope="module")
def first(registry: ModelRegistry, lineage_outcome: TrainingOutcome) -> ModelVersionInfo:
    return registry.log_and_register(lineage_outcome, job_id="job-1")


def _in_git_checkout() -> bool:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=False, timeout=30)
    return done.returncode == 0


def test_registered_version_carries_lineage_and_metrics(
    first: ModelVersionInfo, lineage_outcome: TrainingOutcome, home: Path
) -> None:
    assert (first.name, first.version, first.status) == (NAME, "1", "READY")
    assert first.tags["dataset_sha256"] == CSV_SHA256
    assert first.tags["dataset_version"] == "1"
    assert first.tags["job_id"] == "job-1"
    assert first.tags["family"] == lineage_outcome.family
    assert float(first.tags["roc_auc"]) >= 0.75
    commit = first.tags["code_version"]
    if _in_git_checkout():
        # HEAD may move while other work is committed; the commit must exist, though.
        assert len(commit) == 40
        subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO,
                       check=True, timeout=30)
    assert first.metrics["roc_auc"] == pytest.approx(lineage_outcome.heldout["roc_auc"])
    assert first.metrics["threshold"] == pytest.approx(lineage_outcome.threshold)
    assert first.metrics["logistic_regression.cv_roc_auc"] > 0.7
    assert first.params["family"] == lineage_outcome.family
    assert first.params["seed"] == "42"
    assert first.run_id
    # Everything lives in the instance folder.
    assert (home / "mlflow" / "mlflow.db").is_file()
    assert any((home / "mlflow" / "artifacts").rglob("model.joblib"))


def test_logged_mlflow_model_has_signature_and_example(
    first: ModelVersionInfo, home: Path
) -> None:
    mlmodels = list((home / "mlflow" / "artifacts").rglob("MLmodel"))
    assert len(mlmodels) == 1
    meta = yaml.safe_load(mlmodels[0].read_text())
    assert meta["flavors"]["sklearn"]["serialization_format"] == "cloudpickle"
    inputs = yaml.safe_load(meta["signature"]["inputs"])
    assert [c["name"] for c in inputs] == [
        "Age", "Sex", "Job", "Housing", "Saving accounts", "Checking account",
        "Credit amount", "Duration", "Purpose"]
    assert {c["name"]: c["required"] for c in inputs}["Checking account"] is False
    assert "saved_input_example_info" in meta


def test_second_run_is_a_new_version_and_listing(
    registry: ModelRegistry, first: ModelVersionInfo, lineage_outcome: TrainingOutcome
) -> None:
    second = registry.log_and_register(lineage_outcome, job_id="job-2")
    assert second.version == "2"
    assert second.run_id != first.run_id
    versions = registry.list_versions(NAME)
    assert [v.version for v in versions] == ["2", "1"]
    assert [v.tags["job_id"] for v in versions] == ["job-2", "job-1"]
    assert versions[0].metrics == versions[1].metrics  # same inputs, same seed
    assert versions[0].to_dict()["created_at"]


def test_aliases(registry: ModelRegistry, first: ModelVersionInfo) -> None:
    assert registry.get_alias(NAME, "prod") is None
    registry.set_alias(NAME, "staging", first.version)
    registry.set_alias(NAME, "prod", first.version)
    assert registry.get_version(NAME, first.version).aliases == ("prod", "staging")
    latest = registry.list_versions(NAME)[0]
    registry.set_alias(NAME, "staging", latest.version)  # moves, does not duplicate
    assert registry.get_alias(NAME, "staging").version == latest.version  # type: ignore[union-attr]
    by_version = {v.version: v.aliases for v in registry.list_versions(NAME)}
    assert by_version[first.version] == ("prod",)
    assert by_version[latest.version] == ("staging",)
    registry.delete_alias(NAME, "prod")
    registry.delete_alias(NAME, "prod")  # idempotent
    assert registry.get_alias(NAME, "prod") is None


def test_download_package_load_and_predict(
    registry: ModelRegistry, first: ModelVersionInfo, lineage_outcome: TrainingOutcome,
    home: Path
) -> None:
    dest = home / "models" / NAME / first.version
    pkg = registry.load_package(NAME, first.version, dest)
    assert pkg.path == dest
    assert pkg.signature.version == first.version
    assert pkg.signature.threshold == lineage_outcome.threshold
    records = validate_records(pkg.signature, [
        dict(DESIGN_EXAMPLE), {**DESIGN_EXAMPLE, "Checking account": None, "Duration": 6}])
    preds = predict_records(pkg.pipeline, pkg.signature, records)
    expected = predict_records(lineage_outcome.pipeline, lineage_outcome.signature, records)
    assert preds == expected
    assert all(set(p.probabilities) == {"bad", "good"} for p in preds)
    # the baseline of linear reason codes travels with the package
    assert read_baseline(dest) == tuple(lineage_outcome.explain["encoded_mean"])
    # Downloading again replaces the directory in place.
    registry.download_package(NAME, first.version, dest)
    assert sorted(p.name for p in dest.parent.iterdir()) == [first.version]


def test_mlflow_model_loads_by_alias_and_matches(
    registry: ModelRegistry, first: ModelVersionInfo, lineage_outcome: TrainingOutcome
) -> None:
    registry.set_alias(NAME, "prod", first.version)
    model = registry.load_pipeline(NAME, "prod")
    assert list(model.classes_) == ["bad", "good"]
    frame = features_frame([DESIGN_EXAMPLE], NUMERIC, CATEGORICAL)
    np.testing.assert_allclose(model.predict_proba(frame),
                               lineage_outcome.pipeline.predict_proba(frame))
    by_number = registry.load_pipeline(NAME, first.version)
    np.testing.assert_allclose(by_number.predict_proba(frame), model.predict_proba(frame))


def test_experiment_is_created_once(registry: ModelRegistry, first: ModelVersionInfo) -> None:
    exp_id, created = registry.ensure_experiment()
    assert created is False and exp_id


def test_unknown_versions_raise(registry: ModelRegistry, first: ModelVersionInfo,
                                tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no version 99"):
        registry.get_version(NAME, 99)
    with pytest.raises(RegistryError):
        registry.download_package(NAME, 99, tmp_path / "x")
    with pytest.raises(RegistryError):
        registry.load_pipeline(NAME, "nonexistent-alias")
    assert registry.list_versions("no-such-model") == []


def test_code_version_can_be_given_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.ml.registry import code_version

    monkeypatch.setenv("MODELGATE_CODE_VERSION", "v1.2.3-abc")
    assert code_version() == "v1.2.3-abc"


def test_deleted_experiment_is_restored(tmp_path: Path) -> None:
    reg = ModelRegistry.for_home(tmp_path)
    exp_id, created = reg.ensure_experiment()
    assert created is True
    reg.client.delete_experiment(exp_id)
    assert reg.ensure_experiment() == (exp_id, False)
    assert reg.client.get_experiment(exp_id).lifecycle_stage == "active"
