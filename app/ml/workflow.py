"""The train job's work in one call: dataset version → training → MLflow run and version."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.ml.config import TrainingConfig
from app.ml.dataset import (
    DEFAULT_DATASET_NAME,
    DatasetError,
    DatasetVersion,
    latest_version,
    load_version,
    register_dataset,
)
from app.ml.registry import DEFAULT_MODEL_NAME, ModelRegistry, ModelVersionInfo
from app.ml.training import ProgressCallback, TrainingOutcome, train

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What a train job produced (``to_dict`` is the job's JSON result)."""

    dataset: DatasetVersion
    dataset_created: bool
    model: ModelVersionInfo
    outcome: TrainingOutcome
    package_path: Path | None
    reused_identical: bool = False  # an identical version existed and was not registered again

    def to_dict(self) -> dict[str, Any]:
        """Return a small JSON-ready summary (no model object, no secrets)."""
        held = self.outcome.heldout
        return {
            "model": {"name": self.model.name, "version": self.model.version,
                      "run_id": self.model.run_id},
            "dataset": {"name": self.dataset.name, "version": self.dataset.version,
                        "sha256": self.dataset.sha256, "created": self.dataset_created},
            "family": self.outcome.family,
            "threshold": self.outcome.threshold,
            "metrics": {
                "cv_roc_auc": self.outcome.metrics["cv"]["roc_auc_mean"],
                "roc_auc": held["roc_auc"],
                "accuracy": held["accuracy"],
                "f1_bad": held["f1_bad"],
                "brier": held["brier"],
                "expected_cost": held["expected_cost"],
            },
            "candidates": {c.family: {"cv_roc_auc": c.cv_roc_auc_mean,
                                      "heldout_roc_auc": c.heldout_roc_auc}
                           for c in self.outcome.candidates},
            "package_path": str(self.package_path) if self.package_path else None,
            "reused_identical": self.reused_identical,
            "fairness": fairness_summary(self.outcome.fairness),
        }


def fairness_summary(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per attribute, the selection-rate ratio and equalised-odds gap of a fairness report
    (None where not judged): what a train job's result shows of it."""
    out = {}
    for attribute in report.get("attributes") or []:
        summary = attribute.get("summary") or {}
        ratio = summary.get("selection_rate") or {}
        gap = summary.get("equalized_odds_gap") or {}
        out[str(attribute.get("name"))] = {
            "selection_rate_ratio": ratio.get("ratio") if ratio.get("meaningful") else None,
            "equalized_odds_gap": gap.get("value") if gap.get("meaningful") else None}
    return out


def _resolve_dataset(
    home: Path, dataset: str | os.PathLike[str] | None, name: str
) -> tuple[DatasetVersion, bool]:
    if dataset is None:
        found = latest_version(home, name)
        if found is None:
            raise DatasetError(f"no version of dataset {name!r} is registered in {home}")
        return found, False
    path = Path(dataset)
    if path.is_dir():
        return load_version(path), False
    reg = register_dataset(home, path, name)
    return reg.dataset, reg.created


def train_and_register(
    home: str | os.PathLike[str],
    dataset: str | os.PathLike[str] | None = None,
    *,
    job_id: str | None = None,
    config: TrainingConfig | Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    registry: ModelRegistry | None = None,
    materialise: bool = True,
    dataset_name: str = DEFAULT_DATASET_NAME,
) -> TrainResult:
    """Register the data (a no-op for known bytes), train, log the run and register a version.

    Args:
        home: MODELGATE_HOME.
        dataset: a CSV to register, a registered version directory, or None for the latest
            registered version.
        job_id: the panel job id, tagged on the run and the model version.
        config: a TrainingConfig or the ``model:`` mapping of the YAML config.
        progress: ``progress(percent, step)``; may raise to abort (e.g. on cancellation).
        registry: defaults to ``ModelRegistry.for_home(home)``.
        materialise: also download the package to ``<home>/models/<name>/<version>/``.

    Returns:
        The dataset version, the new model version, the training outcome, the package path.

    Raises:
        DatasetError, ConfigError, TrainingError, RegistryError: nothing is registered.
    """
    home_path = Path(home)
    report = progress or (lambda _pct, _step: None)
    cfg = config if isinstance(config, TrainingConfig) else TrainingConfig.from_dict(config)
    report(0, "registering dataset")
    ds, created = _resolve_dataset(home_path, dataset, dataset_name)

    def scaled(pct: int, step: str) -> None:
        report(2 + pct * 83 // 100, step)  # training takes 2-85 %

    outcome = train(ds.path, cfg, progress=scaled)
    report(86, "logging run and registering model")
    reg = registry or ModelRegistry.for_home(home_path)
    same = _identical_version(reg, outcome) if cfg.skip_identical else None
    version = same or reg.log_and_register(outcome, job_id=job_id)
    package_path = None
    if materialise:
        report(95, "materialising model package")
        package_path = reg.download_package(
            version.name, version.version, home_path / "models" / version.name / version.version
        )
    report(100, f"{version.name} version {version.version} has the same data, parameters and "
                "seed; reused it instead of registering a copy" if same else
                f"registered {version.name} version {version.version}")
    logger.info("train job %s: %s v%s (%s, held-out ROC AUC %.3f)", job_id, version.name,
                version.version, outcome.family, outcome.heldout["roc_auc"])
    return TrainResult(ds, created, version, outcome, package_path, same is not None)


def _identical_version(reg: ModelRegistry, outcome: TrainingOutcome) -> ModelVersionInfo | None:
    """The newest registered version this training reproduces (same dataset hash and params,
    the seed among them), or None."""
    name = outcome.signature.name or DEFAULT_MODEL_NAME
    identity = (outcome.dataset.sha256, tuple(sorted(outcome.params().items())))
    return next((v for v in reg.list_versions(name) if v.training_identity() == identity), None)
