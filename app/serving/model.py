"""Load a model package, choose the fast path or the scikit-learn fallback, and self-test."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.ml.signature import FieldType, Signature
from app.serving.fastpath import CompiledModel, NotCompilableError, compile_pipeline
from app.serving.validation import RecordValidator, Row

log = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"
SIGNATURE_FILE = "signature.json"
EQUALITY_TOLERANCE = 1e-9


class ModelLoadError(Exception):
    """The model package cannot be loaded or failed its self-test."""


Proba = tuple[float, ...]


@dataclass(frozen=True)
class ScoringModel:
    """A loaded model: signature, the sklearn pipeline, and the compiled path when available."""

    signature: Signature
    pipeline: Any
    classes: tuple[str, ...]  # pipeline.classes_ order: the order of every probability tuple
    compiled: CompiledModel | None
    fallback_reason: str | None

    @property
    def path_name(self) -> str:
        """'fastpath' or 'sklearn', for health details and logs."""
        return "fastpath" if self.compiled is not None else "sklearn"

    def predict_proba(self, rows: Sequence[Row]) -> list[Proba]:
        """Probabilities in self.classes order via the compiled path, else scikit-learn."""
        if self.compiled is not None:
            return self.compiled.predict_proba(rows)
        return self.sklearn_proba(rows)

    def sklearn_proba(self, rows: Sequence[Row]) -> list[Proba]:
        """Probabilities from the original pipeline on a DataFrame (missing = NaN, as trained)."""
        import numpy as np
        import pandas as pd

        names = list(self.signature.feature_names)
        columns = {
            name: [np.nan if row[i] is None else row[i] for row in rows]
            for i, name in enumerate(names)
        }
        frame = pd.DataFrame(columns, columns=names)
        proba = self.pipeline.predict_proba(frame)
        return [tuple(float(p) for p in r) for r in proba]

    def predictions(self, rows: Sequence[Row]) -> list[dict[str, object]]:
        """The response's predictions: label by name and probabilities keyed by class name."""
        classes = self.classes
        label_from = self.signature.label_from
        out: list[dict[str, object]] = []
        for proba in self.predict_proba(rows):
            by_name = dict(zip(classes, proba, strict=True))
            out.append({"label": label_from(by_name), "probabilities": by_name})
        return out


def probe_rows(signature: Signature, example: Row) -> list[Row]:
    """The example plus variants covering every category, null, and both ends of each range."""
    rows = [example]
    for i, spec in enumerate(signature.fields):
        values: list[object] = []
        if spec.type is FieldType.CATEGORY:
            values += list(spec.categories)
        else:
            values += [v for v in (spec.minimum, spec.maximum) if v is not None]
            if spec.type is FieldType.INTEGER:
                values = [int(v) for v in values]  # type: ignore[call-overload]
        if spec.nullable:
            values.append(None)
        rows += [example[:i] + (v,) + example[i + 1 :] for v in values]
    return rows


def _check_probabilities(probas: Sequence[Proba]) -> None:
    """Every probability finite, in [0, 1], and each row summing to 1."""
    for proba in probas:
        if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in proba):
            raise ModelLoadError("self-test produced a probability outside [0, 1]")
        if abs(sum(proba) - 1.0) > 1e-6:
            raise ModelLoadError("self-test probabilities do not sum to 1")


def max_abs_difference(a: Sequence[Proba], b: Sequence[Proba]) -> float:
    """Largest absolute difference between two lists of probability tuples."""
    if len(a) != len(b):
        return math.inf
    return max(
        (abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)),
        default=0.0,
    )


def self_test(model: ScoringModel) -> ScoringModel:
    """Score the signature's example (and probes); demote to sklearn if the fast path differs.

    Raises:
        ModelLoadError: the example is invalid or the pipeline cannot score it.
    """
    signature = model.signature
    if not signature.example:
        raise ModelLoadError("signature.json has no example record for the self-test")
    try:
        example = RecordValidator(signature).validate_body({"data": [dict(signature.example)]})[0]
    except Exception as exc:
        raise ModelLoadError("the signature's example does not pass its own validation") from exc
    rows = probe_rows(signature, example)
    try:
        reference = model.sklearn_proba(rows)
    except Exception as exc:
        raise ModelLoadError(f"the pipeline failed on the example: {type(exc).__name__}") from exc
    _check_probabilities(reference)
    if model.compiled is None:
        return model
    difference = max_abs_difference(model.compiled.predict_proba(rows), reference)
    if difference <= EQUALITY_TOLERANCE:
        return model
    reason = f"fast path differs from scikit-learn by {difference:.3g} on the self-test"
    log.warning("falling back to the scikit-learn pipeline: %s", reason)
    return ScoringModel(signature, model.pipeline, model.classes, None, reason)


def load_model(model_dir: Path) -> ScoringModel:
    """Load model.joblib and signature.json, compile if possible, and run the self-test.

    Raises:
        ModelLoadError: missing files, mismatched classes, or a failed self-test.
    """
    import joblib

    try:
        signature = Signature.load(model_dir / SIGNATURE_FILE)
        pipeline = joblib.load(model_dir / MODEL_FILE)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the model package: {exc}") from exc
    if signature.version is None:  # answers, health and OpenAPI name the served version
        raise ModelLoadError("signature.json has no version (the package is not registered)")
    classes = tuple(str(c) for c in getattr(pipeline, "classes_", ()))
    if sorted(classes) != sorted(signature.classes):
        raise ModelLoadError("the pipeline's classes_ do not match signature.json's classes")
    compiled: CompiledModel | None = None
    reason: str | None = None
    try:
        compiled = compile_pipeline(pipeline, signature.feature_names)
    except NotCompilableError as exc:
        reason = f"not compilable: {exc}"
    except Exception as exc:  # an unexpected fitted layout must not stop serving via sklearn
        reason = f"not compilable: {type(exc).__name__}: {exc}"
    if reason is not None:
        log.warning("fast path unavailable, serving with scikit-learn: %s", reason)
    return self_test(ScoringModel(signature, pipeline, classes, compiled, reason))
