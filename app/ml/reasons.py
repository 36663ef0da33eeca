"""The training side of reason codes: the baseline a linear model's contributions are taken from.

A logistic regression's reason codes are ``coef_j * (x_j - mean_j)`` on the encoded features,
relative to the mean of the encoded *training* features, so that the base (intercept +
coef · mean) is the log-odds of the average training applicant. scikit-learn keeps no category
frequencies, so training records that mean in the model package as ``explain.json``:

    {"encoded_mean": [...], "encoded_names": ["numeric__Age", ...], "n_train": 800}

Tree models need no file: path-dependent TreeSHAP takes its baseline from the trees' covers.
The scoring service reads the file with :func:`read_baseline` (standard library only).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

EXPLAIN_FILE = "explain.json"


def encoded_baseline(pipeline: Any, X_train: Any) -> dict[str, Any]:
    """The explain.json content: the mean of the encoded training features of a fitted pipeline.

    Args:
        pipeline: the fitted Pipeline([preprocess, classifier]) of a model package.
        X_train: the frame the pipeline was fitted on.
    """
    import numpy as np

    preprocess = pipeline.steps[0][1]
    encoded = preprocess.transform(X_train)
    mean = np.asarray(encoded.mean(axis=0), dtype=np.float64).ravel()  # dense or sparse
    try:
        names = [str(n) for n in preprocess.get_feature_names_out()]
    except (AttributeError, ValueError):
        names = []
    return {"encoded_mean": [float(v) for v in mean], "encoded_names": names,
            "n_train": int(encoded.shape[0])}


def read_baseline(model_dir: Path) -> tuple[float, ...] | None:
    """The encoded training mean from ``model_dir/explain.json``; None when the file is absent.

    Raises:
        ValueError: the file exists but is not a list of finite numbers.
    """
    path = model_dir / EXPLAIN_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    values = data.get("encoded_mean") if isinstance(data, dict) else None
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in values
    ):
        raise ValueError(f"{EXPLAIN_FILE}: encoded_mean must be a list of finite numbers")
    return tuple(float(v) for v in values)
