"""Real training on the real CSV: quality bar, determinism, labels by name, config errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from app.ml.dataset import register_dataset
from app.ml.evaluation import CostMatrix, choose_threshold, expected_cost
from app.ml.predict import predict_records
from app.ml.signature import DESIGN_EXAMPLE
from app.ml.training import (
    CATEGORICAL,
    NUMERIC,
    ConfigError,
    TrainingConfig,
    TrainingError,
    TrainingOutcome,
    train,
)
from app.ml.validation import validate_records

from .conftest import CSV_SHA256

# A cheap configuration for tests that only need *a* trained model.
QUICK = TrainingConfig.from_dict({
    "candidates": [{"family": "logistic_regression"}], "cv_folds": 3, "importance_repeats": 2,
})


def test_heldout_auc_meets_the_bar(outcome: TrainingOutcome) -> None:
    assert outcome.heldout["roc_auc"] >= 0.75
    assert outcome.metrics["n_train"] == 800 and outcome.metrics["n_test"] == 200


def test_both_families_compared_and_best_cv_chosen(outcome: TrainingOutcome) -> None:
    by_family = {c.family: c for c in outcome.candidates}
    assert set(by_family) == {"logistic_regression", "gradient_boosting"}
    best = max(outcome.candidates, key=lambda c: c.cv_roc_auc_mean)
    assert outcome.family == best.family
    for cand in outcome.candidates:
        assert len(cand.cv_roc_auc_folds) == 5
        assert 0.70 <= cand.cv_roc_auc_mean <= 0.80
        assert cand.heldout_roc_auc >= 0.74
    assert outcome.metrics["cv"]["roc_auc_mean"] == best.cv_roc_auc_mean


def test_pipeline_has_the_contract_shape(outcome: TrainingOutcome) -> None:
    pipe = outcome.pipeline
    assert isinstance(pipe, Pipeline)
    assert [name for name, _ in pipe.steps] == ["preprocess", "classifier"]
    pre = pipe.named_steps["preprocess"]
    assert isinstance(pre, ColumnTransformer)
    [(n_name, n_pipe, n_cols), (c_name, c_pipe, c_cols)] = pre.transformers
    assert (n_name, n_cols, c_name, c_cols) == ("numeric", list(NUMERIC),
                                                "categorical", list(CATEGORICAL))
    assert NUMERIC == ("Age", "Job", "Credit amount", "Duration")
    assert CATEGORICAL == ("Sex", "Housing", "Saving accounts", "Checking account", "Purpose")
    assert [s for s, _ in n_pipe.steps] == ["impute", "scale"]
    assert isinstance(n_pipe.steps[0][1], SimpleImputer)
    assert n_pipe.steps[0][1].strategy == "median"
    assert isinstance(n_pipe.steps[1][1], StandardScaler)
    imp, ohe = c_pipe.steps[0][1], c_pipe.steps[1][1]
    assert [s for s, _ in c_pipe.steps] == ["impute", "onehot"]
    assert (imp.strategy, imp.fill_value) == ("constant", "missing")
    assert isinstance(ohe, OneHotEncoder) and ohe.handle_unknown == "ignore"
    assert isinstance(pipe.named_steps["classifier"],
                      LogisticRegression | GradientBoostingClassifier)
    assert list(pipe.classes_) == ["bad", "good"]
    # Missing accounts became their own "missing" category, as in the seed.
    fitted = pre.named_transformers_["categorical"].named_steps["onehot"]
    cats = dict(zip(CATEGORICAL, fitted.categories_, strict=True))
    assert "missing" in list(cats["Checking account"])


def test_same_seed_gives_same_metrics(outcome: TrainingOutcome, csv_path: Path) -> None:
    again = train(csv_path, TrainingConfig())
    assert again.metrics == outcome.metrics
    assert again.importance == outcome.importance
    assert again.threshold == outcome.threshold
    frame = _frame([DESIGN_EXAMPLE])
    np.testing.assert_array_equal(again.pipeline.predict_proba(frame),
                                  outcome.pipeline.predict_proba(frame))


def test_other_seed_gives_other_split(csv_path: Path) -> None:
    a = train(csv_path, QUICK)
    b = train(csv_path, TrainingConfig.from_dict({**QUICK.to_dict(), "seed": 7}))
    assert a.heldout["roc_auc"] != b.heldout["roc_auc"]


def _frame(records: list[Any]) -> Any:
    from app.ml.predict import features_frame

    return features_frame(records, NUMERIC, CATEGORICAL)


def test_probabilities_are_labelled_by_class_name(outcome: TrainingOutcome) -> None:
    sig = outcome.signature
    risky = {**DESIGN_EXAMPLE, "Checking account": "little", "Saving accounts": "little",
             "Duration": 72, "Credit amount": 15000, "Age": 22}
    safe = {**DESIGN_EXAMPLE, "Checking account": None, "Saving accounts": "rich",
            "Duration": 6, "Credit amount": 1000, "Age": 45, "Housing": "own"}
    records = validate_records(sig, [risky, safe])
    preds = predict_records(outcome.pipeline, sig, records)
    raw = outcome.pipeline.predict_proba(_frame(records))
    bad_col = list(outcome.pipeline.classes_).index("bad")
    for pred, row in zip(preds, raw, strict=True):
        assert set(pred.probabilities) == {"bad", "good"}
        assert pred.probabilities["bad"] == pytest.approx(row[bad_col])
        assert pred.probabilities["bad"] + pred.probabilities["good"] == pytest.approx(1.0)
        assert pred.label == ("bad" if pred.probabilities["bad"] >= sig.threshold else "good")
    # Domain sanity that catches swapped columns: the risky applicant is the likelier "bad".
    assert preds[0].probabilities["bad"] > preds[1].probabilities["bad"]
    assert preds[0].label == "bad"


def test_all_null_accounts_are_scored(outcome: TrainingOutcome) -> None:
    rec = {**DESIGN_EXAMPLE, "Saving accounts": None, "Checking account": None}
    [pred] = predict_records(outcome.pipeline, outcome.signature,
                             validate_records(outcome.signature, [rec]))
    assert 0.0 < pred.probabilities["bad"] < 1.0


def test_threshold_and_cost_are_consistent(outcome: TrainingOutcome) -> None:
    held = outcome.heldout
    cm = held["confusion_matrix"]
    (tp, fn), (fp, tn) = cm["matrix"]
    assert tp + fn + fp + tn == 200
    assert tp + fn == 60  # 30% bad, stratified
    assert held["expected_cost"] == pytest.approx((5 * fn + 1 * fp) / 200)
    assert held["accuracy"] == pytest.approx((tp + tn) / 200)
    assert held["precision_bad"] == pytest.approx(tp / (tp + fp))
    assert held["recall_bad"] == pytest.approx(tp / (tp + fn))
    # Cheaper than calling everyone good (1.5) and than the naive 0.5 threshold.
    assert held["expected_cost"] < held["expected_cost_all_good"] == pytest.approx(1.5)
    assert held["expected_cost"] < held["expected_cost_at_0_5"]
    assert 0.0 < outcome.threshold < 0.5
    assert outcome.signature.threshold == outcome.threshold
    assert 0.0 < held["brier"] < 0.25


def test_choose_threshold_minimises_cost() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.3
    p = np.clip(np.where(y, 0.45, 0.3) + rng.normal(0, 0.15, 500), 0, 1)
    cost = CostMatrix()
    t = choose_threshold(y, p, cost)
    best = expected_cost(y, p, t, cost)
    for other in np.linspace(0, 1, 201):
        assert best <= expected_cost(y, p, other, cost) + 1e-12
    # Symmetric costs ask for more evidence before calling someone bad.
    assert choose_threshold(y, p, CostMatrix(1.0, 1.0)) > t


def test_choose_threshold_separates_perfect_scores() -> None:
    y = np.array([False, False, True, True])
    t = choose_threshold(y, np.array([0.1, 0.2, 0.6, 0.9]), CostMatrix())
    assert 0.2 < t <= 0.6
    assert expected_cost(y, np.array([0.1, 0.2, 0.6, 0.9]), t, CostMatrix()) == 0.0


def test_stored_curves_are_valid_json(outcome: TrainingOutcome) -> None:
    for part in (outcome.metrics, outcome.importance, outcome.calibration, outcome.roc):
        json.dumps(part, allow_nan=False)
    roc = outcome.roc
    assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0, 0, 1, 1)
    assert roc["fpr"] == sorted(roc["fpr"]) and roc["tpr"] == sorted(roc["tpr"])
    assert roc["auc"] == pytest.approx(outcome.heldout["roc_auc"])
    bins = outcome.calibration["bins"]
    assert sum(b["count"] for b in bins) == 200
    assert all(b["lower"] <= b["mean_predicted"] <= b["upper"] for b in bins)


def test_importance_is_by_original_column(outcome: TrainingOutcome) -> None:
    feats = outcome.importance["features"]
    assert sorted(f["feature"] for f in feats) == sorted([*NUMERIC, *CATEGORICAL])
    means = [f["importance_mean"] for f in feats]
    assert means == sorted(means, reverse=True)
    assert means[0] > 0.02
    assert "Checking account" in [f["feature"] for f in feats[:3]]


def test_progress_is_reported(csv_path: Path) -> None:
    seen: list[tuple[int, str]] = []
    train(csv_path, QUICK, progress=lambda pct, step: seen.append((pct, step)))
    pcts = [p for p, _ in seen]
    assert pcts == sorted(pcts) and pcts[0] == 0 and pcts[-1] == 100
    assert any("logistic_regression" in s for _, s in seen)


def test_registered_dataset_gives_lineage(tmp_path: Path, csv_path: Path) -> None:
    ds = register_dataset(tmp_path, csv_path).dataset
    out = train(ds.path, QUICK)
    assert (out.dataset.name, out.dataset.version, out.dataset.sha256) == (
        "german-credit", 1, CSV_SHA256)
    assert out.metrics["dataset"] == {"name": "german-credit", "version": 1,
                                      "sha256": CSV_SHA256}
    assert out.family == "logistic_regression"


def test_config_from_yaml_section() -> None:
    text = """
    model:
      seed: 7
      cv_folds: 3
      candidates:
        - family: logistic_regression
          params: {C: 0.5}
        - family: gradient_boosting
          params: {n_estimators: 50, max_depth: 2}
      cost: {bad_as_good: 10}
      bounds: {Age: [21, 99]}
    """
    cfg = TrainingConfig.from_dict(yaml.safe_load(text)["model"])
    assert (cfg.seed, cfg.cv_folds, cfg.test_size) == (7, 3, 0.2)
    assert cfg.candidates[1].params == {"n_estimators": 50, "max_depth": 2}
    assert cfg.cost == CostMatrix(10.0, 1.0)
    assert cfg.bounds["Age"] == (21, 99) and cfg.bounds["Duration"] == (1, 120)
    assert cfg.candidates[0].estimator(7).C == 0.5
    assert cfg.candidates[1].estimator(7).random_state == 7
    assert TrainingConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainingConfig.from_dict(None) == TrainingConfig()


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"seeed": 1}, "model.seeed"),
        ({"seed": "x"}, "model.seed"),
        ({"seed": True}, "model.seed"),
        ({"test_size": 0.9}, "model.test_size"),
        ({"cv_folds": 1}, "model.cv_folds"),
        ({"candidates": []}, "model.candidates"),
        ({"candidates": [{"family": "svm"}]}, "model.candidates[0].family"),
        ({"candidates": [{"family": "logistic_regression"},
                         {"family": "gradient_boosting", "params": {"depth": 3}}]},
         "model.candidates[1].params.depth"),
        ({"candidates": [{"family": "gradient_boosting", "params": {"max_depth": -1}}]},
         "model.candidates[0].params"),
        ({"candidates": [{"family": "logistic_regression", "extra": 1}]},
         "model.candidates[0].extra"),
        ({"cost": {"bad_as_good": -1}}, "model.cost.bad_as_good"),
        ({"cost": {"false_negative": 5}}, "model.cost.false_negative"),
        ({"bounds": {"Age": [120, 18]}}, "model.bounds.Age"),
        ({"bounds": {"Age": "18-120"}}, "model.bounds.Age"),
        ([1, 2], "model"),
    ],
)
def test_config_errors_name_the_bad_key(section: Any, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TrainingConfig.from_dict(section)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")


def test_training_rejects_unusable_data(tmp_path: Path, csv_path: Path) -> None:
    lines = csv_path.read_text().splitlines()
    no_duration = tmp_path / "no-duration.csv"
    no_duration.write_text("\n".join(",".join(c for i, c in enumerate(line.split(","))
                                              if i != 8) for line in lines) + "\n")
    with pytest.raises(TrainingError, match="lacks columns: Duration"):
        train(no_duration, QUICK)
    relabelled = tmp_path / "relabelled.csv"
    relabelled.write_text(csv_path.read_text().replace(",good\n", ",ok\n"))
    with pytest.raises(TrainingError, match="must hold exactly"):
        train(relabelled, QUICK)
    with pytest.raises(TrainingError, match="not found"):
        train(tmp_path / "missing.csv", QUICK)


@pytest.mark.parametrize("family", ["hist_gradient_boosting", "random_forest"])
def test_other_families_train(csv_path: Path, family: str) -> None:
    params = {"n_estimators": 50} if family == "random_forest" else {"max_iter": 50}
    cfg = TrainingConfig.from_dict({"candidates": [{"family": family, "params": params}],
                                    "cv_folds": 2, "importance_repeats": 1})
    out = train(csv_path, cfg)
    assert out.family == family
    assert list(out.pipeline.classes_) == ["bad", "good"]
    assert out.heldout["roc_auc"] > 0.65
