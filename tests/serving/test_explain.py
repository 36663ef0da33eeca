"""Reason codes: exact contributions that sum to the log-odds and match the shap package."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from app.ml.reasons import EXPLAIN_FILE, read_baseline
from app.serving.explain import Explainer, ExplainUnavailable, build_explainer
from app.serving.model import ScoringModel, load_model
from tests.serving.conftest import Replica, make_keys, start_replica
from tests.serving.modelpkg import (
    CATEGORIES,
    FEATURES,
    NULLABLE,
    RANGES,
    build_model_package,
    load_frame,
)

SHAP_TOLERANCE = 1e-6
SUM_TOLERANCE = 1e-9


def dataset_rows() -> tuple[pd.DataFrame, list[tuple[object, ...]]]:
    """The whole CSV as the pipeline's frame and as validated rows (missing → None)."""
    frame, _ = load_frame()
    rows = [
        tuple(None if isinstance(v, float) and math.isnan(v) else v for v in record)
        for record in frame[FEATURES].itertuples(index=False, name=None)
    ]
    return frame, rows


@pytest.fixture(scope="module", params=["lr", "gb"])
def family(request: pytest.FixtureRequest) -> tuple[str, Path, ScoringModel, Explainer]:
    """A compiled model package of each family, loaded, with its explainer."""
    package: Path = request.getfixturevalue(f"{request.param}_package")
    model = load_model(package)
    assert model.compiled is not None, model.fallback_reason
    return request.param, package, model, build_explainer(model, package)


def shap_values(kind: str, model: ScoringModel, package: Path,
                encoded: np.ndarray) -> tuple[float, np.ndarray]:
    """shap's base and values on the encoded features, in log-odds of "bad" (classes_[0])."""
    import shap

    classifier = model.pipeline.named_steps["classifier"]
    assert list(model.pipeline.classes_) == ["bad", "good"]  # shap explains classes_[1]
    if kind == "lr":
        mean = np.asarray(read_baseline(package))
        explainer = shap.LinearExplainer(classifier, (mean, np.cov(encoded, rowvar=False)))
        values = explainer.shap_values(encoded)
    else:
        explainer = shap.TreeExplainer(classifier, feature_perturbation="tree_path_dependent")
        values = explainer.shap_values(encoded, check_additivity=True)
    expected = float(np.ravel(explainer.expected_value)[0])
    return -expected, -np.asarray(values)


def test_contributions_match_shap_on_the_whole_dataset(family: Any) -> None:
    kind, package, model, explainer = family
    frame, rows = dataset_rows()
    encoded = np.asarray(model.pipeline.named_steps["preprocess"].transform(frame),
                         dtype=np.float64)
    base, reference = shap_values(kind, model, package, encoded)
    ours = explainer.encoded(rows)
    assert ours.shape == reference.shape == (len(rows), encoded.shape[1])
    assert abs(explainer.base - base) <= SHAP_TOLERANCE
    assert float(np.max(np.abs(ours - reference))) <= SHAP_TOLERANCE
    # grouped back to the input fields: each field's one-hot columns add up
    by_field = explainer.by_field(rows)
    assert float(np.max(np.abs(by_field - reference @ explainer.groups))) <= SHAP_TOLERANCE
    # every field moves some record (nothing is silently zero)
    assert np.all(np.abs(by_field).max(axis=0) > 0.0)


def test_contributions_sum_to_the_log_odds_of_bad(family: Any) -> None:
    _, _, model, explainer = family
    frame, rows = dataset_rows()
    log_odds_bad = -model.pipeline.decision_function(frame)  # decision: log-odds of "good"
    total = explainer.base + explainer.by_field(rows).sum(axis=1)
    assert float(np.max(np.abs(total - log_odds_bad))) <= SUM_TOLERANCE
    # the base is the log-odds of the baseline, between the dataset's extremes
    assert log_odds_bad.min() < explainer.base < log_odds_bad.max()


def test_reasons_shape_order_and_direction(family: Any) -> None:
    _, _, model, explainer = family
    _, rows = dataset_rows()
    for row, reasons in zip(rows[:50], explainer.reasons(rows[:50]), strict=True):
        factors = reasons["factors"]
        assert [f["field"] for f in factors] != [] and len(factors) == len(FEATURES)
        assert sorted(f["field"] for f in factors) == sorted(FEATURES)
        sizes = [abs(f["contribution"]) for f in factors]
        assert sizes == sorted(sizes, reverse=True)
        for factor in factors:
            assert factor["value"] == row[FEATURES.index(factor["field"])]
            expected = "raises" if factor["contribution"] > 0 else (
                "lowers" if factor["contribution"] < 0 else "neutral")
            assert factor["direction"] == expected
        proba = model.predict_proba([row])[0]
        bad = model.classes.index("bad")
        logit = math.log(proba[bad]) - math.log(proba[1 - bad])
        assert abs(reasons["base"] + sum(f["contribution"] for f in factors) - logit) < 1e-9


def _value(name: str) -> st.SearchStrategy[object]:
    if name in RANGES:
        low, high = RANGES[name]
        return st.integers(int(low), int(high))
    values = st.sampled_from(CATEGORIES[name])
    return st.none() | values if name in NULLABLE else values


RECORDS = st.tuples(*(_value(name) for name in FEATURES))


@settings(max_examples=150, deadline=None, database=None)
@given(rows=st.lists(RECORDS, min_size=1, max_size=20))
def test_any_valid_records_sum_exactly(lr_package: Path, gb_package: Path,
                                       rows: list[tuple[object, ...]]) -> None:
    for package in (lr_package, gb_package):
        model = _loaded(package)
        explainer = _explainers[package]
        assert model.compiled is not None
        raw = np.asarray(model.compiled.raw_scores(rows))[:, 0]
        total = explainer.base + explainer.by_field(rows).sum(axis=1)
        assert float(np.max(np.abs(total + raw))) <= SUM_TOLERANCE  # raw: log-odds of "good"


_models: dict[Path, ScoringModel] = {}
_explainers: dict[Path, Explainer] = {}


def _loaded(package: Path) -> ScoringModel:
    if package not in _models:
        _models[package] = load_model(package)
        _explainers[package] = build_explainer(_models[package], package)
    return _models[package]


@pytest.mark.parametrize("table", [True, False], ids=["pattern-table", "per-request"])
def test_deeper_subsampled_trees_match_shap(tmp_path: Path, table: bool) -> None:
    """Depth 6 with subsampling (covers are weighted counts), both ways of computing shares."""
    import json

    import joblib

    from app.ml.reasons import encoded_baseline
    from tests.serving.modelpkg import make_pipeline, signature_dict

    frame, target = load_frame()
    pipeline = make_pipeline("gb").set_params(classifier__max_depth=6, classifier__subsample=0.7,
                                              classifier__n_estimators=40)
    pipeline.fit(frame, target)
    package = tmp_path / "deep"
    package.mkdir()
    joblib.dump(pipeline, package / "model.joblib")
    (package / "signature.json").write_text(json.dumps(signature_dict()), "utf-8")
    (package / EXPLAIN_FILE).write_text(json.dumps(encoded_baseline(pipeline, frame)), "utf-8")
    model = load_model(package)
    explainer = build_explainer(model, package)
    assert explainer.trees is not None and explainer.trees.table is not None
    if not table:
        explainer = dataclasses.replace(
            explainer, trees=dataclasses.replace(explainer.trees, table=None))
    _, rows = dataset_rows()
    encoded = np.asarray(pipeline.named_steps["preprocess"].transform(frame), dtype=np.float64)
    base, reference = shap_values("gb", model, package, encoded)
    assert abs(explainer.base - base) <= SHAP_TOLERANCE
    assert float(np.max(np.abs(explainer.encoded(rows) - reference))) <= SHAP_TOLERANCE
    total = explainer.base + explainer.by_field(rows).sum(axis=1)
    assert float(np.max(np.abs(total + pipeline.decision_function(frame)))) <= SUM_TOLERANCE


def test_a_linear_package_without_its_baseline_cannot_explain(tmp_path: Path) -> None:
    package = build_model_package(tmp_path / "old", "lr")
    (package / EXPLAIN_FILE).unlink()
    with pytest.raises(ExplainUnavailable, match="explain.json"):
        build_explainer(load_model(package), package)


def test_a_model_served_by_sklearn_cannot_explain(tmp_path: Path) -> None:
    package = build_model_package(tmp_path / "rf", "rf")
    with pytest.raises(ExplainUnavailable, match="scikit-learn"):
        build_explainer(load_model(package), package)


# --------------------------------------------------------------------------- over HTTP


def _score(replica: Replica, body: dict[str, Any], query: str = "") -> requests.Response:
    return requests.post(f"{replica.url}/score{query}", json=body, headers=replica.headers(),
                         timeout=10)


def _check_answer(answer: dict[str, Any], records: int) -> None:
    assert len(answer["predictions"]) == records
    for prediction in answer["predictions"]:
        reasons = prediction["reasons"]
        total = reasons["base"] + sum(f["contribution"] for f in reasons["factors"])
        p = prediction["probabilities"]
        assert abs(total - (math.log(p["bad"]) - math.log(p["good"]))) < 1e-9
        assert {f["direction"] for f in reasons["factors"]} <= {"raises", "lowers", "neutral"}


def test_the_replica_explains_on_request_only(replica: Replica,
                                              example_body: dict[str, Any]) -> None:
    plain = _score(replica, example_body)
    assert plain.status_code == 200 and "reasons" not in plain.json()["predictions"][0]
    for body, query in (({**example_body, "explain": True}, ""), (example_body, "?explain=true")):
        answer = _score(replica, body, query)
        assert answer.status_code == 200, answer.text
        _check_answer(answer.json(), 1)
        assert answer.json()["predictions"][0]["probabilities"] == \
            plain.json()["predictions"][0]["probabilities"]
    off = _score(replica, {**example_body, "explain": False}, "?explain=false")
    assert off.status_code == 200 and "reasons" not in off.json()["predictions"][0]
    ready = requests.get(f"{replica.url}/health/ready", timeout=5).json()
    assert ready["explain"] is True and ready["explain_unavailable"] is None


def test_a_malformed_explain_flag_is_a_422(replica: Replica,
                                          example_body: dict[str, Any]) -> None:
    for body, query in (({**example_body, "explain": "yes"}, ""),
                        ({**example_body, "explain": 1}, ""), (example_body, "?explain=maybe")):
        answer = _score(replica, body, query)
        assert answer.status_code == 422, answer.text
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        assert [e["field"] for e in answer.json()["errors"]] == ["explain"]


def test_a_gb_replica_explains_a_batch(gb_package: Path, tmp_path: Path) -> None:
    running = start_replica(gb_package, make_keys(tmp_path), tmp_path / "replica.log")
    try:
        frame, _ = load_frame()
        records = [
            {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
            for r in frame.head(200).to_dict("records")
        ]
        answer = _score(running, {"data": records, "explain": True})
        assert answer.status_code == 200, answer.text
        _check_answer(answer.json(), 200)
    finally:
        running.stop()


def test_a_replica_that_cannot_explain_still_scores(tmp_path: Path,
                                                    example_body: dict[str, Any]) -> None:
    package = build_model_package(tmp_path / "old", "lr")
    (package / EXPLAIN_FILE).unlink()
    running = start_replica(package, make_keys(tmp_path), tmp_path / "replica.log")
    try:
        assert _score(running, example_body).status_code == 200
        refused = _score(running, {**example_body, "explain": True})
        assert refused.status_code == 422
        assert refused.json()["errors"] == [
            {"field": "explain", "message": "not available for this model version"}]
        assert "explain.json" in refused.json()["detail"]
        ready = requests.get(f"{running.url}/health/ready", timeout=5).json()
        assert ready["explain"] is False and "explain.json" in ready["explain_unavailable"]
    finally:
        running.stop()


def test_the_openapi_document_describes_explain_and_reasons(
        replica: Replica, example_body: dict[str, Any]) -> None:
    from jsonschema import Draft202012Validator

    spec = requests.get(f"{replica.url}/openapi.json", timeout=5).json()
    schemas = spec["components"]["schemas"]
    assert schemas["ScoreRequest"]["properties"]["explain"]["type"] == "boolean"
    parameters = spec["paths"]["/score"]["post"]["parameters"]
    assert {"name": "explain", "in": "query"}.items() <= next(
        p for p in parameters if p["name"] == "explain").items()
    assert schemas["Prediction"]["properties"]["reasons"]["$ref"] == "#/components/schemas/Reasons"
    assert schemas["ReasonFactor"]["properties"]["field"]["enum"] == FEATURES
    # an explained answer (and its request) validate against the document
    body = {**example_body, "explain": True}
    Draft202012Validator({**spec, "$ref": "#/components/schemas/ScoreRequest"}).validate(body)
    answer = _score(replica, body).json()
    validator = Draft202012Validator({**spec, "$ref": "#/components/schemas/ScoreResponse"})
    validator.validate(answer)
    broken = {**answer, "predictions": [{**answer["predictions"][0], "reasons": {"base": 1}}]}
    assert not validator.is_valid(broken)
