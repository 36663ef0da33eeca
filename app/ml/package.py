"""Model package directories (training → scoring service), written atomically."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.ml.reasons import EXPLAIN_FILE
from app.ml.signature import Signature

if TYPE_CHECKING:
    from app.ml.training import TrainingOutcome

logger = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"
SIGNATURE_FILE = "signature.json"
METRICS_FILE = "metrics.json"
IMPORTANCE_FILE = "importance.json"
CALIBRATION_FILE = "calibration.json"
ROC_FILE = "roc.json"
PACKAGE_FILES: tuple[str, ...] = (
    MODEL_FILE, SIGNATURE_FILE, METRICS_FILE, IMPORTANCE_FILE, CALIBRATION_FILE, ROC_FILE,
)
# Written by every training since the fairness report exists; packages of versions trained
# before lack it and stay loadable and deployable.
FAIRNESS_FILE = "fairness.json"
# The training baseline for drift checks (app.ml.drift); optional: packages written before it
# existed stay valid, and their baseline is computed from the registered data on first use.
BASELINE_FILE = "baseline.json"
OPTIONAL_FILES: tuple[str, ...] = (FAIRNESS_FILE, EXPLAIN_FILE, BASELINE_FILE)


class PackageError(Exception):
    """A model package is incomplete or unreadable."""


@dataclass(frozen=True)
class ModelPackage:
    """A loaded model package."""

    path: Path
    pipeline: Any
    signature: Signature
    metrics: Mapping[str, Any]
    importance: Mapping[str, Any]
    calibration: Mapping[str, Any]
    roc: Mapping[str, Any]
    fairness: Mapping[str, Any] = field(default_factory=dict)  # {} when the package has none


def _dump_json(path: Path, data: Any) -> None:
    # allow_nan=False: a NaN would make the file unreadable to strict JSON parsers.
    path.write_text(json.dumps(data, indent=2, allow_nan=False), encoding="utf-8")


def write_package(
    outcome: TrainingOutcome,
    dest: str | os.PathLike[str],
    version: str | int | None = None,
) -> Path:
    """Write a model package directory, replacing ``dest`` atomically.

    Args:
        outcome: the result of :func:`app.ml.training.train`.
        dest: the package directory to create or replace.
        version: the registry version to record in signature.json.

    Returns:
        The package directory.
    """
    signature = outcome.signature.with_version(None if version is None else str(version))
    return write_package_parts(
        dest,
        pipeline=outcome.pipeline,
        signature=signature,
        metrics=outcome.metrics,
        importance=outcome.importance,
        calibration=outcome.calibration,
        roc=outcome.roc,
        explain=outcome.explain or None,
        fairness=outcome.fairness or None,
        baseline=outcome.baseline or None,
    )


def write_package_parts(
    dest: str | os.PathLike[str],
    *,
    pipeline: Any,
    signature: Signature,
    metrics: Mapping[str, Any],
    importance: Mapping[str, Any],
    calibration: Mapping[str, Any],
    roc: Mapping[str, Any],
    explain: Mapping[str, Any] | None = None,
    fairness: Mapping[str, Any] | None = None,
    baseline: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model package from its parts (see :func:`write_package`).

    ``explain`` (explain.json, the baseline of linear reason codes), ``fairness``
    (fairness.json, the report by group) and ``baseline`` (baseline.json, the drift baseline)
    are optional: packages written before them lack them; the scoring service then declines
    to explain a linear model's predictions, and drift checks compute the baseline from the
    registered data.
    """
    import joblib

    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        joblib.dump(pipeline, tmp / MODEL_FILE)
        (tmp / SIGNATURE_FILE).write_text(signature.to_json(), encoding="utf-8")
        _dump_json(tmp / METRICS_FILE, dict(metrics))
        _dump_json(tmp / IMPORTANCE_FILE, dict(importance))
        _dump_json(tmp / CALIBRATION_FILE, dict(calibration))
        _dump_json(tmp / ROC_FILE, dict(roc))
        if explain is not None:
            _dump_json(tmp / EXPLAIN_FILE, dict(explain))
        if fairness is not None:
            _dump_json(tmp / FAIRNESS_FILE, dict(fairness))
        if baseline:
            _dump_json(tmp / BASELINE_FILE, dict(baseline))
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; readers may run as another user
        _swap_in(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote model package %s (version %s)", target, signature.version)
    return target


def _swap_in(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target``; readers see the old or the new package, never a mix."""
    if not target.exists():
        os.replace(tmp, target)
        return
    # rename(2) cannot replace a non-empty directory: move the old one aside first.
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def load_package(path: str | os.PathLike[str]) -> ModelPackage:
    """Load a model package directory.

    Only load packages this installation wrote: model.joblib is a pickle.

    Raises:
        PackageError: a file is missing or unreadable, or the model's classes do not
            match the signature.
    """
    import joblib

    pdir = Path(path)
    missing = [name for name in PACKAGE_FILES if not (pdir / name).is_file()]
    if missing:
        raise PackageError(f"{pdir} is not a model package: missing {', '.join(missing)}")
    try:
        signature = Signature.load(pdir / SIGNATURE_FILE)
        pipeline = joblib.load(pdir / MODEL_FILE)
        parts = {name: _read_json(pdir / name)
                 for name in (METRICS_FILE, IMPORTANCE_FILE, CALIBRATION_FILE, ROC_FILE)}
        fairness = _read_json(pdir / FAIRNESS_FILE) if (pdir / FAIRNESS_FILE).is_file() else {}
    except (OSError, ValueError, KeyError) as exc:
        raise PackageError(f"cannot read model package {pdir}: {exc}") from exc
    classes = [str(c) for c in getattr(pipeline, "classes_", [])]
    if sorted(classes) != sorted(signature.classes):
        raise PackageError(
            f"model classes {classes} do not match signature classes {list(signature.classes)}"
        )
    return ModelPackage(
        path=pdir,
        pipeline=pipeline,
        signature=signature,
        metrics=parts[METRICS_FILE],
        importance=parts[IMPORTANCE_FILE],
        calibration=parts[CALIBRATION_FILE],
        roc=parts[ROC_FILE],
        fairness=fairness,
    )
