"""Train, compare and evaluate the credit risk classifier (pure scikit-learn, no Flask)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from app.ml.config import (
    DEFAULT_MODEL_NAME,
    FAMILIES,
    CandidateSpec,
    ConfigError,
    TrainingConfig,
)
from app.ml.dataset import META_FILE, DatasetSchema, build_signature, infer_schema, read_csv
from app.ml.drift import DEFAULT_BINS, build_baseline
from app.ml.evaluation import (
    CostMatrix,
    calibration_data,
    choose_threshold,
    expected_cost,
    heldout_metrics,
    importance_data,
    roc_data,
)
from app.ml.fairness import fairness_report
from app.ml.predict import frame_from_dataframe
from app.ml.reasons import encoded_baseline
from app.ml.signature import Signature

logger = logging.getLogger(__name__)

# Re-exported: callers configure and run training from this one module.
__all__ = [
    "CATEGORICAL", "CLASSES", "DEFAULT_MODEL_NAME", "FAMILIES", "NUMERIC", "POSITIVE_CLASS",
    "TARGET", "CandidateResult", "CandidateSpec", "ConfigError", "CostMatrix", "DatasetRef",
    "ProgressCallback", "TrainingConfig", "TrainingError", "TrainingOutcome", "build_pipeline",
    "feature_names", "train",
]

NUMERIC: tuple[str, ...] = ("Age", "Job", "Credit amount", "Duration")
CATEGORICAL: tuple[str, ...] = (
    "Sex", "Housing", "Saving accounts", "Checking account", "Purpose",
)
TARGET = "Risk"
CLASSES: tuple[str, ...] = ("bad", "good")
POSITIVE_CLASS = "bad"

ProgressCallback = Callable[[int, str], None]


class TrainingError(Exception):
    """Training cannot run on the given data."""


@dataclass(frozen=True)
class DatasetRef:
    """Which data a model was trained on (lineage)."""

    name: str | None
    version: int | None
    sha256: str
    path: Path


@dataclass(frozen=True)
class CandidateResult:
    """Cross-validated (and, for information, held-out) scores of one family."""

    family: str
    params: Mapping[str, Any]
    cv_roc_auc_mean: float
    cv_roc_auc_std: float
    cv_roc_auc_folds: tuple[float, ...]
    heldout_roc_auc: float

    def to_dict(self) -> dict[str, Any]:
        """Return the metrics.json form."""
        return {
            "family": self.family,
            "params": {k: _jsonable(v) for k, v in self.params.items()},
            "cv_roc_auc_mean": self.cv_roc_auc_mean,
            "cv_roc_auc_std": self.cv_roc_auc_std,
            "cv_roc_auc_folds": list(self.cv_roc_auc_folds),
            "heldout_roc_auc": self.heldout_roc_auc,
        }


@dataclass(frozen=True)
class TrainingOutcome:
    """A fitted model with everything needed to package, log and register it."""

    pipeline: Any
    family: str
    signature: Signature
    threshold: float
    metrics: Mapping[str, Any]  # metrics.json
    importance: Mapping[str, Any]  # importance.json
    calibration: Mapping[str, Any]  # calibration.json
    roc: Mapping[str, Any]  # roc.json
    candidates: tuple[CandidateResult, ...]
    dataset: DatasetRef
    config: TrainingConfig
    # explain.json: the encoded training mean that linear reason codes are taken from.
    explain: Mapping[str, Any] = field(default_factory=dict)
    # fairness.json: the report by group on the held-out part (app/ml/fairness.py)
    fairness: Mapping[str, Any] = field(default_factory=dict)
    # baseline.json: the training part's field distributions and the held-out P(bad), for
    # drift checks (app.ml.drift); empty for outcomes built without one.
    baseline: Mapping[str, Any] = field(default_factory=dict)

    @property
    def heldout(self) -> Mapping[str, Any]:
        """Held-out metrics of the chosen model."""
        return self.metrics["heldout"]

    def flat_metrics(self) -> dict[str, float]:
        """Return scalar metrics for a tracking server (names use only [a-z0-9_.])."""
        held = self.metrics["heldout"]
        out = {
            "cv_roc_auc": self.metrics["cv"]["roc_auc_mean"],
            "cv_roc_auc_std": self.metrics["cv"]["roc_auc_std"],
            "cv_expected_cost": self.metrics["cv"]["expected_cost"],
            "threshold": self.threshold,
        }
        for key in ("roc_auc", "accuracy", "precision_bad", "recall_bad", "f1_bad", "brier",
                    "expected_cost", "expected_cost_at_0_5"):
            out[key] = held[key]
        for cand in self.candidates:
            out[f"{cand.family}.cv_roc_auc"] = cand.cv_roc_auc_mean
            out[f"{cand.family}.heldout_roc_auc"] = cand.heldout_roc_auc
        return {k: float(v) for k, v in out.items()}

    def params(self) -> dict[str, str]:
        """Return the run parameters as strings (config plus the chosen family's params)."""
        chosen = next(c for c in self.config.candidates if c.family == self.family)
        out = {
            "family": self.family,
            "seed": str(self.config.seed),
            "test_size": str(self.config.test_size),
            "cv_folds": str(self.config.cv_folds),
            "cost_bad_as_good": str(self.config.cost.bad_as_good),
            "cost_good_as_bad": str(self.config.cost.good_as_bad),
            "candidates": ",".join(c.family for c in self.config.candidates),
        }
        if self.config.exclude:
            # Only when set, so versions trained before the option existed stay identical.
            out["exclude"] = ",".join(self.config.exclude)
        est_params = self.pipeline.named_steps["classifier"].get_params()
        for key in sorted(set(est_params) | set(chosen.params)):
            out[f"classifier.{key}"] = str(est_params.get(key))
        return out


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def build_pipeline(estimator: Any, exclude: Sequence[str] = ()) -> Any:
    """Return the model package's Pipeline shape (docs/internal-contracts.md).

    Columns in ``exclude`` are left out of the preprocessing, so the model never sees them;
    they may still be present in the input (the ColumnTransformer drops what it does not use).
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = Pipeline([("impute", SimpleImputer(strategy="median")),
                        ("scale", StandardScaler())])
    categorical = Pipeline([
        ("impute", SimpleImputer(strategy="constant", fill_value="missing")),
        ("onehot", OneHotEncoder(handle_unknown="ignore")),
    ])
    return Pipeline([
        ("preprocess", ColumnTransformer([
            ("numeric", numeric, [c for c in NUMERIC if c not in exclude]),
            ("categorical", categorical, [c for c in CATEGORICAL if c not in exclude]),
        ])),
        ("classifier", estimator),
    ])


def _dataset_ref(path: Path) -> tuple[DatasetRef, Path]:
    """Resolve a dataset version directory or a bare CSV to (lineage, csv path)."""
    if path.is_dir():
        csv = path / "data.csv"
        try:
            meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TrainingError(f"{path} is not a registered dataset version: {exc}") from exc
        return DatasetRef(meta.get("name"), int(meta["version"]), meta["sha256"], path), csv
    if not path.is_file():
        raise TrainingError(f"dataset not found: {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return DatasetRef(None, None, digest, path), path


def _proba_bad(pipeline: Any, X: Any) -> Any:
    # Column chosen by class name: never assume position.
    idx = list(pipeline.classes_).index(POSITIVE_CLASS)
    return pipeline.predict_proba(X)[:, idx]


def _cross_validate(spec: CandidateSpec, X: Any, y: Any, config: TrainingConfig,
                    exclude: Sequence[str] | None = None) -> tuple[list[float], Any]:
    """Return per-fold ROC AUCs and out-of-fold P(bad) on the training part."""
    import numpy as np
    from sklearn.base import clone
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(n_splits=config.cv_folds, shuffle=True, random_state=config.seed)
    oof = np.zeros(len(y), dtype="float64")
    aucs = []
    template = build_pipeline(spec.estimator(config.seed),
                              config.exclude if exclude is None else exclude)
    y_bad = (y == POSITIVE_CLASS).to_numpy()
    for train_idx, test_idx in folds.split(X, y):
        model = clone(template).fit(X.iloc[train_idx], y.iloc[train_idx])
        oof[test_idx] = _proba_bad(model, X.iloc[test_idx])
        aucs.append(float(roc_auc_score(y_bad[test_idx], oof[test_idx])))
    return aucs, oof


def train(
    dataset: str | os.PathLike[str],
    config: TrainingConfig | None = None,
    progress: ProgressCallback | None = None,
) -> TrainingOutcome:
    """Train every candidate family, choose one by CV ROC AUC and evaluate it held out.

    Args:
        dataset: a registered dataset version directory (data.csv + meta.json, for lineage)
            or a bare CSV file.
        config: the training configuration (defaults: seed 42, 80/20, 5-fold CV, logistic
            regression vs gradient boosting, cost 5 for bad-as-good and 1 for good-as-bad).
        progress: called as ``progress(percent, step)`` as work advances.

    Returns:
        The fitted pipeline (on the training part), its signature with the cost-minimising
        threshold, and the metrics, importance, calibration and ROC data.

    Raises:
        TrainingError: the data lacks a required column or class.
    """
    import numpy as np
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    config = config or TrainingConfig()
    report = progress or (lambda _pct, _step: None)
    report(0, "loading data")
    ref, csv = _dataset_ref(Path(dataset))
    df = read_csv(csv)
    missing = [c for c in (*NUMERIC, *CATEGORICAL, TARGET) if c not in df.columns]
    if missing:
        raise TrainingError(f"dataset lacks columns: {', '.join(missing)}")
    labels = set(df[TARGET].dropna().astype(str))
    if labels != set(CLASSES):
        raise TrainingError(f"{TARGET} must hold exactly {CLASSES}, found {sorted(labels)}")
    df = df[df[TARGET].notna()]
    X = frame_from_dataframe(df, NUMERIC, CATEGORICAL)
    y = df[TARGET].astype(str).astype(object)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=config.test_size, stratify=y, random_state=config.seed
    )
    y_train_bad = (y_train == POSITIVE_CLASS).to_numpy()
    y_test_bad = (y_test == POSITIVE_CLASS).to_numpy()

    n = len(config.candidates)
    results: list[CandidateResult] = []
    fitted: dict[str, tuple[Any, Any, Any]] = {}
    for i, spec in enumerate(config.candidates):
        report(5 + int(70 * i / n), f"cross-validating {spec.family}")
        aucs, oof = _cross_validate(spec, X_train, y_train, config)
        model = build_pipeline(spec.estimator(config.seed), config.exclude).fit(X_train,
                                                                                y_train)
        p_test = _proba_bad(model, X_test)
        results.append(CandidateResult(
            family=spec.family,
            params=MappingProxyType(dict(spec.params)),
            cv_roc_auc_mean=float(np.mean(aucs)),
            cv_roc_auc_std=float(np.std(aucs)),
            cv_roc_auc_folds=tuple(aucs),
            # Reported for comparison only; the choice below never looks at held-out data.
            heldout_roc_auc=float(roc_auc_score(y_test_bad, p_test)),
        ))
        fitted[spec.family] = (model, oof, p_test)
        logger.info("candidate %s: CV ROC AUC %.4f ± %.4f", spec.family,
                    results[-1].cv_roc_auc_mean, results[-1].cv_roc_auc_std)

    # Ties go to the earlier (simpler) candidate: max() keeps the first maximum.
    best = max(results, key=lambda r: r.cv_roc_auc_mean)
    pipeline, oof, p_test = fitted[best.family]
    report(75, "choosing threshold")
    threshold = choose_threshold(y_train_bad, oof, config.cost)
    report(80, "evaluating on held-out data")
    held = heldout_metrics(y_test_bad, p_test, threshold, config.cost)
    report(85, "permutation importance")
    importance = importance_data(pipeline, X_test, y_test,
                                 [c for c in (*NUMERIC, *CATEGORICAL) if c not in config.exclude],
                                 config.importance_repeats, config.seed)
    calibration = calibration_data(y_test_bad, p_test, config.calibration_bins)
    roc = roc_data(y_test_bad, p_test)
    report(90, "fairness report")
    fairness = fairness_report(X_test, y_test_bad, p_test, threshold, config.fairness,
                               trained_without=config.exclude)
    if config.exclude:
        fairness["comparison"] = _comparison(
            next(c for c in config.candidates if c.family == best.family), config,
            (X_train, y_train, X_test, y_test))

    report(95, "building signature")
    schema: DatasetSchema = infer_schema(csv)
    signature = build_signature(
        schema, [c for c in df.columns if c in (*NUMERIC, *CATEGORICAL)],
        name=config.name, target=TARGET, classes=CLASSES, positive_class=POSITIVE_CLASS,
        threshold=threshold, bounds=config.bounds, max_rows=config.max_rows,
    )
    baseline = build_baseline(signature, X_train, p_test, bins=DEFAULT_BINS)
    metrics = {
        "family": best.family,
        "selection": "cv_roc_auc_mean",
        "seed": config.seed,
        "test_size": config.test_size,
        "cv_folds": config.cv_folds,
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "positive_class": POSITIVE_CLASS,
        "classes": list(CLASSES),
        "threshold": threshold,
        "cost_matrix": {"bad_as_good": config.cost.bad_as_good,
                        "good_as_bad": config.cost.good_as_bad},
        "cv": {
            "roc_auc_mean": best.cv_roc_auc_mean,
            "roc_auc_std": best.cv_roc_auc_std,
            "roc_auc_folds": list(best.cv_roc_auc_folds),
            "expected_cost": expected_cost(y_train_bad, oof, threshold, config.cost),
        },
        "heldout": held,
        "candidates": [r.to_dict() for r in results],
        "dataset": {"name": ref.name, "version": ref.version, "sha256": ref.sha256},
        "exclude": list(config.exclude),
    }
    report(100, "trained")
    return TrainingOutcome(
        pipeline=pipeline, family=best.family, signature=signature, threshold=threshold,
        metrics=metrics, importance=importance, calibration=calibration, roc=roc,
        candidates=tuple(results), dataset=ref, config=config, fairness=fairness,
        explain=encoded_baseline(pipeline, X_train), baseline=baseline.to_dict(),
    )


def _comparison(spec: CandidateSpec, config: TrainingConfig, split: tuple[Any, Any, Any, Any]
                ) -> dict[str, Any]:
    """The fairness report of the same family trained with every input column.

    The comparison model goes through the same steps as the real one (cross-validated scores,
    the cost-minimising threshold on them, a fit on the training part), so the two reports
    differ only by the excluded columns.
    """
    from sklearn.metrics import roc_auc_score

    X_train, y_train, X_test, y_test = split
    _aucs, oof = _cross_validate(spec, X_train, y_train, config, exclude=())
    threshold = choose_threshold((y_train == POSITIVE_CLASS).to_numpy(), oof, config.cost)
    model = build_pipeline(spec.estimator(config.seed)).fit(X_train, y_train)
    y_test_bad = (y_test == POSITIVE_CLASS).to_numpy()
    p_test = _proba_bad(model, X_test)
    report = fairness_report(X_test, y_test_bad, p_test, threshold, config.fairness)
    return {"trained_without": [], "family": spec.family, "threshold": threshold,
            "heldout_roc_auc": float(roc_auc_score(y_test_bad, p_test)),
            "expected_cost": expected_cost(y_test_bad, p_test, threshold, config.cost),
            "overall": report["overall"], "attributes": report["attributes"]}


def feature_names() -> Sequence[str]:
    """Return the model's input columns (numeric first, then categorical)."""
    return (*NUMERIC, *CATEGORICAL)
