"""Turn validated records into model input and probabilities into labelled predictions."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.ml.signature import FieldType, Signature

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One scored record: the label and the probability of each class, by name."""

    label: str
    probabilities: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        """Return the scoring API form."""
        return {"label": self.label, "probabilities": dict(self.probabilities)}


def features_frame(
    records: Sequence[Mapping[str, Any]],
    numeric: Sequence[str],
    categorical: Sequence[str],
) -> Any:
    """Build the model's input DataFrame: numeric columns float64, categorical object with NaN.

    Training and scoring both go through here so the pipeline always sees the same dtypes;
    a missing or ``None`` categorical becomes NaN, which the imputer turns into "missing".
    """
    import numpy as np
    import pandas as pd

    columns: dict[str, Any] = {}
    for name in numeric:
        columns[name] = np.array(
            [np.nan if r.get(name) is None else float(r[name]) for r in records], dtype="float64"
        )
    for name in categorical:
        columns[name] = np.array(
            [np.nan if r.get(name) is None else str(r[name]) for r in records], dtype=object
        )
    return pd.DataFrame(columns, columns=[*numeric, *categorical])


def frame_from_dataframe(df: Any, numeric: Sequence[str], categorical: Sequence[str]) -> Any:
    """Normalise a DataFrame (e.g. read from CSV) to the dtypes of :func:`features_frame`."""
    import numpy as np
    import pandas as pd

    out = pd.DataFrame(index=df.index)
    for name in numeric:
        out[name] = df[name].astype("float64")
    for name in categorical:
        values = df[name].astype(object)
        # pandas 3 reads text columns as the "str" dtype; the pipeline is fitted on object
        # columns with NaN for gaps, which is also what scoring builds.
        out[name] = values.where(values.notna(), np.nan).astype(object)
    return out


def signature_columns(signature: Signature) -> tuple[list[str], list[str]]:
    """Return (numeric, categorical) feature names of a signature, in signature order."""
    numeric = [f.name for f in signature.fields if f.type is not FieldType.CATEGORY]
    categorical = [f.name for f in signature.fields if f.type is FieldType.CATEGORY]
    return numeric, categorical


def class_probabilities(pipeline: Any, frame: Any) -> list[dict[str, float]]:
    """Return one ``{class name: probability}`` dict per row, read via ``classes_``."""
    proba = pipeline.predict_proba(frame)
    names = [str(c) for c in pipeline.classes_]
    return [{name: float(p) for name, p in zip(names, row, strict=True)} for row in proba]


def predict_records(
    pipeline: Any, signature: Signature, records: Sequence[Mapping[str, Any]]
) -> list[Prediction]:
    """Score validated records; the label applies the signature's threshold.

    Args:
        pipeline: the fitted scikit-learn pipeline of a model package.
        signature: the package's signature.
        records: records returned by :func:`app.ml.validation.validate_records`.

    Returns:
        One Prediction per record, probabilities keyed by class name.
    """
    numeric, categorical = signature_columns(signature)
    frame = features_frame(records, numeric, categorical)
    out = []
    for probs in class_probabilities(pipeline, frame):
        out.append(Prediction(signature.label_for(probs[signature.positive_class]), probs))
    return out
