"""The compiled fast path equals scikit-learn's predict_proba (≤ 1e-9), for LR and GB."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import RandomForestClassifier

from app.serving.fastpath import BoostingModel, NotCompilableError, compile_pipeline
from app.serving.model import EQUALITY_TOLERANCE, ScoringModel, load_model
from app.serving.validation import RecordValidator
from tests.serving.modelpkg import (
    CATEGORIES,
    FEATURES,
    NULLABLE,
    RANGES,
    build_model_package,
    load_frame,
)


@pytest.fixture(scope="module", params=["lr", "gb"])
def model(request: pytest.FixtureRequest) -> ScoringModel:
    """A loaded model (LR or GB) that must have compiled."""
    package: Path = request.getfixturevalue(f"{request.param}_package")
    loaded = load_model(package)
    assert loaded.compiled is not None, loaded.fallback_reason
    return loaded


def frame_for(rows: list[tuple[object, ...]]) -> pd.DataFrame:
    """The DataFrame scikit-learn sees for validated rows (missing → NaN, as in training)."""
    data = {
        name: [np.nan if r[i] is None else r[i] for r in rows] for i, name in enumerate(FEATURES)
    }
    return pd.DataFrame(data, columns=FEATURES)


def max_diff(model: ScoringModel, rows: list[tuple[object, ...]]) -> float:
    """Max |fast − sklearn| over rows, each scored alone and all as one batch."""
    reference = model.pipeline.predict_proba(frame_for(rows))
    assert model.compiled is not None
    batch = np.asarray(model.compiled.predict_proba(rows))
    single = np.asarray([model.compiled.predict_proba([row])[0] for row in rows])
    return float(max(np.abs(batch - reference).max(), np.abs(single - reference).max()))


def test_whole_dataset_matches(model: ScoringModel) -> None:
    features, _ = load_frame()
    records = [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in rec.items()}
        for rec in features.to_dict("records")
    ]
    rows = RecordValidator(model.signature).validate_body({"data": records})
    assert len(rows) == 1000
    # Compare against predict_proba on the original training frame too, not only our frame.
    reference = model.pipeline.predict_proba(features)
    assert model.compiled is not None
    fast = np.asarray(model.compiled.predict_proba(rows))
    assert np.abs(fast - reference).max() <= EQUALITY_TOLERANCE
    assert max_diff(model, rows) <= EQUALITY_TOLERANCE


def _record_strategy() -> st.SearchStrategy[dict[str, Any]]:
    """Any record the signature accepts: full ranges, all categories, nulls, omissions."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name in FEATURES:
        if name in RANGES:
            low, high = RANGES[name]
            fields[name] = st.integers(low, high) | st.integers(low, high).map(float)
        elif name in NULLABLE:
            fields[name] = st.none() | st.sampled_from(CATEGORIES[name])
        else:
            fields[name] = st.sampled_from(CATEGORIES[name])
    return st.fixed_dictionaries(fields).map(
        lambda rec: {k: v for k, v in rec.items() if not (v is None and hash(k) % 2)}
    )


@settings(max_examples=60, deadline=None, database=None)
@given(records=st.lists(_record_strategy(), min_size=1, max_size=40))
def test_random_valid_records_match(model: ScoringModel, records: list[dict[str, Any]]) -> None:
    rows = RecordValidator(model.signature).validate_body({"data": records})
    assert max_diff(model, rows) <= EQUALITY_TOLERANCE


def test_gb_batch_and_row_paths_both_exercised(gb_package: Path) -> None:
    loaded = load_model(gb_package)
    assert isinstance(loaded.compiled, BoostingModel)
    features, _ = load_frame()
    rows = RecordValidator(loaded.signature).validate_body(
        {
            "data": [
                {k: None if v != v else v for k, v in r.items()}
                for r in features.head(50).to_dict("records")
            ]
        }
    )
    batch = loaded.compiled._raw_batch(rows)
    one_by_one = [loaded.compiled._raw_one(row) for row in rows]
    assert np.abs(np.asarray(batch) - np.asarray(one_by_one)).max() <= 1e-12


def test_unsupported_classifier_falls_back_to_sklearn(lr_package: Path, tmp_path: Path) -> None:
    pipeline = joblib.load(lr_package / "model.joblib")
    features, target = load_frame()
    pipeline.set_params(classifier=RandomForestClassifier(n_estimators=5, random_state=0))
    pipeline.fit(features, target)
    with pytest.raises(NotCompilableError):
        compile_pipeline(pipeline, FEATURES)
    package = build_model_package(tmp_path / "rf", "lr")
    joblib.dump(pipeline, package / "model.joblib")
    loaded = load_model(package)
    assert loaded.compiled is None and loaded.path_name == "sklearn"
    assert loaded.fallback_reason and "RandomForestClassifier" in loaded.fallback_reason
    example = {"data": [dict(loaded.signature.example)]}
    prediction = loaded.predictions(RecordValidator(loaded.signature).validate_body(example))
    assert prediction[0]["label"] in ("bad", "good")


def test_labels_follow_threshold_and_classes_by_name(model: ScoringModel) -> None:
    features, _ = load_frame()
    sample = features.head(200)
    rows = RecordValidator(model.signature).validate_body(
        {
            "data": [
                {k: None if v != v else v for k, v in r.items()} for r in sample.to_dict("records")
            ]
        }
    )
    predictions = model.predictions(rows)
    classes = list(model.pipeline.classes_)
    reference = model.pipeline.predict_proba(sample)
    bad = classes.index("bad")
    for prediction, proba in zip(predictions, reference, strict=True):
        probabilities = prediction["probabilities"]
        assert isinstance(probabilities, dict)
        assert abs(probabilities["bad"] - proba[bad]) <= EQUALITY_TOLERANCE
        assert abs(probabilities["good"] - proba[1 - bad]) <= EQUALITY_TOLERANCE
        expected = "bad" if proba[bad] >= model.signature.threshold else "good"
        assert prediction["label"] == expected
