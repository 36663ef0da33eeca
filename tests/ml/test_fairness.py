"""The fairness report: Wilson intervals, groups and bands, figures recomputed by hand from
the held-out split, and training without protected attributes (model.exclude)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from app.ml.config import ConfigError
from app.ml.fairness import (
    FairnessConfig,
    FairnessConfigError,
    GroupSpec,
    fairness_report,
    wilson_interval,
)
from app.ml.predict import features_frame, frame_from_dataframe, predict_records
from app.ml.signature import DESIGN_EXAMPLE
from app.ml.training import (
    CATEGORICAL,
    NUMERIC,
    TARGET,
    TrainingConfig,
    TrainingOutcome,
    train,
)
from app.ml.validation import validate_records

QUICK_EXCLUDE = TrainingConfig.from_dict({
    "cv_folds": 3, "importance_repeats": 1, "exclude": ["Sex"],
    "candidates": [{"family": "logistic_regression", "params": {"max_iter": 1000}}]})


@pytest.mark.parametrize("k,n,low,high", [
    # Published Wilson 95% intervals (Newcombe 1998, table I; Brown, Cai & DasGupta 2001).
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0),
    (81, 263, 0.2553, 0.3662),
])
def test_wilson_interval_matches_published_values(k: int, n: int, low: float,
                                                  high: float) -> None:
    interval = wilson_interval(k, n, 0.95)
    assert interval is not None
    assert interval == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_of_nothing_is_none() -> None:
    assert wilson_interval(0, 0) is None
    wide, narrow = wilson_interval(5, 10, 0.99), wilson_interval(5, 10, 0.8)
    assert wide is not None and narrow is not None
    assert wide[0] < narrow[0] and wide[1] > narrow[1]


def test_bands_label_and_assign_values() -> None:
    age = GroupSpec("age", "Age", (25, 35, 50))
    assert age.labels() == ["under 25", "25–34", "35–49", "50+"]
    assert age.assign([19, 24, 25, 34, 35, 49.5, 50, 75, None, math.nan]) == [
        "under 25", "under 25", "25–34", "25–34", "35–49", "35–49", "50+", "50+", "missing",
        "missing"]
    money = GroupSpec("amount", "Credit amount", (1000.5,))
    assert money.labels() == ["under 1000.5", "1000.5+"]
    assert GroupSpec("sex", "Sex").assign(["male", None, "female"]) == [
        "male", "missing", "female"]


def _by_hand(groups: Any, y_bad: Any, p_bad: Any, threshold: float) -> dict[str, dict[str, Any]]:
    """Counts and rates per group with plain pandas, independent of the report's code."""
    frame = pd.DataFrame({"g": groups, "bad": y_bad, "approved": np.asarray(p_bad) < threshold})
    out = {}
    for name, part in frame.groupby("g"):
        good = part[~part.bad]
        bad = part[part.bad]
        out[str(name)] = {"n": len(part), "approved": int(part.approved.sum()),
                          "selection_rate": part.approved.mean(),
                          "tpr": good.approved.mean() if len(good) else None,
                          "fpr": bad.approved.mean() if len(bad) else None,
                          "actual_good": len(good), "actual_bad": len(bad),
                          "observed_bad": part.bad.mean(),
                          "mean_predicted_bad": float(np.mean(np.asarray(p_bad)[
                              np.asarray(groups) == name]))}
    return out


def test_small_synthetic_report_matches_hand_counts() -> None:
    rng = np.random.default_rng(7)
    sex = np.array(["female"] * 40 + ["male"] * 60, dtype=object)
    y_bad = rng.random(100) < np.where(sex == "female", 0.4, 0.25)
    p_bad = np.clip(0.3 * y_bad + rng.random(100) * 0.6, 0, 1)
    frame = pd.DataFrame({"Sex": sex})
    config = FairnessConfig(groups=(GroupSpec("sex", "Sex"),), min_group_size=20)
    report = fairness_report(frame, y_bad, p_bad, 0.4, config)
    json.dumps(report, allow_nan=False)  # stored as JSON
    [attribute] = report["attributes"]
    hand = _by_hand(sex, y_bad, p_bad, 0.4)
    assert [g["group"] for g in attribute["groups"]] == ["female", "male"]
    for g in attribute["groups"]:
        want = hand[g["group"]]
        for key in ("n", "approved", "actual_good", "actual_bad"):
            assert g[key] == want[key], key
        for key in ("selection_rate", "tpr", "fpr"):
            assert g[key]["value"] == pytest.approx(want[key]), key
        assert g["calibration"]["observed_bad"]["value"] == pytest.approx(want["observed_bad"])
        assert g["calibration"]["mean_predicted_bad"] == pytest.approx(
            want["mean_predicted_bad"])
        low, high = wilson_interval(want["approved"], want["n"], 0.95) or (None, None)
        assert (g["selection_rate"]["low"], g["selection_rate"]["high"]) == (low, high)
    rates = {g: hand[g]["selection_rate"] for g in hand}
    summary = attribute["summary"]["selection_rate"]
    assert summary["difference"] == pytest.approx(max(rates.values()) - min(rates.values()))
    assert summary["ratio"] == pytest.approx(min(rates.values()) / max(rates.values()))
    assert summary["difference_all_groups"] == pytest.approx(summary["difference"])
    eo = attribute["summary"]["equalized_odds_gap"]
    tpr_gap = abs(hand["female"]["tpr"] - hand["male"]["tpr"])
    fpr_gap = abs(hand["female"]["fpr"] - hand["male"]["fpr"])
    meaningful = [gap for gap, denominator in ((tpr_gap, "actual_good"),
                                               (fpr_gap, "actual_bad"))
                  if min(hand[g][denominator] for g in hand) >= 20]
    assert eo["value"] == pytest.approx(max(meaningful))
    assert report["overall"]["n"] == 100
    assert report["overall"]["selection_rate"]["value"] == pytest.approx(
        float(np.mean(p_bad < 0.4)))


def test_small_groups_are_shown_but_not_judged() -> None:
    groups = np.array(["a"] * 50 + ["b"] * 50 + ["c"] * 8, dtype=object)
    y_bad = np.array([False, True] * 54)
    # Group c is approved far less often, but it is too small to count.
    p_bad = np.where(groups == "c", 0.9, np.linspace(0.0, 0.8, 108))
    config = FairnessConfig(groups=(GroupSpec("g", "G"),), min_group_size=30)
    report = fairness_report(pd.DataFrame({"G": groups}), y_bad, p_bad, 0.5, config)
    [attribute] = report["attributes"]
    c = next(g for g in attribute["groups"] if g["group"] == "c")
    assert c["selection_rate"]["value"] == 0.0 and not c["selection_rate"]["meaningful"]
    summary = attribute["summary"]
    assert summary["selection_rate"]["groups_compared"] == ["a", "b"]
    assert summary["selection_rate"]["ratio_all_groups"] == 0.0  # what fairlearn says
    assert summary["selection_rate"]["ratio"] > 0  # what is judged
    # a and b each hold 25 good and 25 bad: below 30, so TPR and FPR are not judged at all.
    assert not summary["tpr"]["meaningful"] and summary["tpr"]["difference"] is None
    assert summary["equalized_odds_gap"] == {**summary["equalized_odds_gap"], "value": None,
                                             "meaningful": False, "parts": []}
    assert any(note.startswith("c: 8 applicants, fewer than 30") for note in
               attribute["notes"])
    assert any("only 25 actually good applicants; its TPR" in note for note in
               attribute["notes"])


def test_training_report_matches_the_held_out_split(outcome: TrainingOutcome,
                                                    csv_path: Path) -> None:
    from sklearn.model_selection import train_test_split

    from app.ml.dataset import read_csv

    report = outcome.fairness
    df = read_csv(csv_path)
    X = frame_from_dataframe(df, NUMERIC, CATEGORICAL)
    y = df[TARGET].astype(str)
    _, X_test, _, y_test = train_test_split(X, y, test_size=0.2, stratify=y, random_state=42)
    p_bad = outcome.pipeline.predict_proba(X_test)[:, list(outcome.pipeline.classes_)
                                                    .index("bad")]
    assert report["n"] == len(y_test) == outcome.metrics["n_test"]
    assert report["threshold"] == outcome.threshold
    assert report["trained_without"] == [] and "comparison" not in report
    by_name = {a["name"]: a for a in report["attributes"]}
    bands = GroupSpec("age", "Age", (25, 35, 50))
    for name, groups in (("sex", X_test["Sex"].to_numpy()),
                         ("age", np.asarray(bands.assign(X_test["Age"].tolist()),
                                            dtype=object))):
        hand = _by_hand(groups, (y_test == "bad").to_numpy(), p_bad, outcome.threshold)
        got = {g["group"]: g for g in by_name[name]["groups"]}
        assert set(got) == set(hand)
        assert sum(g["n"] for g in got.values()) == len(y_test)
        for group, want in hand.items():
            assert got[group]["selection_rate"]["value"] == pytest.approx(
                want["selection_rate"])
            assert got[group]["tpr"]["value"] == pytest.approx(want["tpr"])
    assert [g["group"] for g in by_name["age"]["groups"]] == bands.labels()


def test_fairness_config_round_trips_and_names_bad_keys() -> None:
    config = FairnessConfig.from_dict(
        {"groups": {"sex": {"column": "Sex"}, "age": {"column": "Age", "bands": [30, 60]}},
         "min_group_size": 10}, numeric=NUMERIC, categorical=CATEGORICAL)
    assert FairnessConfig.from_dict(config.to_dict(), numeric=NUMERIC,
                                    categorical=CATEGORICAL) == config
    with pytest.raises(FairnessConfigError) as caught:
        FairnessConfig.from_dict({"groups": {"job": {"column": "Job"}}}, numeric=NUMERIC,
                                 categorical=CATEGORICAL)
    assert caught.value.key == "fairness.groups.job.bands"
    with pytest.raises(ConfigError) as wrapped:
        TrainingConfig.from_dict({"fairness": {"calibration_bins": 1}})
    assert wrapped.value.key == "model.fairness.calibration_bins"


@pytest.fixture(scope="module")
def without_sex(csv_path: Path) -> TrainingOutcome:
    return train(csv_path, QUICK_EXCLUDE)


def test_excluded_fields_are_accepted_at_scoring_and_ignored(
        without_sex: TrainingOutcome) -> None:
    from app.serving.fastpath import compile_pipeline

    outcome = without_sex
    assert "Sex" in [f.name for f in outcome.signature.fields]  # still accepted
    preprocess = outcome.pipeline.named_steps["preprocess"]
    used = [c for _, step, columns in preprocess.transformers_ if step != "drop"
            for c in columns]
    assert "Sex" not in used and len(used) == len(NUMERIC) + len(CATEGORICAL) - 1
    # The signature is unchanged (Sex is still required and validated), the model ignores it.
    records = validate_records(outcome.signature, [{**DESIGN_EXAMPLE, "Sex": "male"},
                                                   {**DESIGN_EXAMPLE, "Sex": "female"}])
    male, female = predict_records(outcome.pipeline, outcome.signature, records)
    assert male.probabilities == female.probabilities
    # The scoring service's compiled fast path agrees, and ignores the field too.
    names = [f.name for f in outcome.signature.fields]
    fast = compile_pipeline(outcome.pipeline, names)
    rows = [tuple(r.get(n) for n in names) for r in records]
    proba = fast.predict_proba(rows)
    assert proba[0] == proba[1]
    frame = features_frame(records, *[[f.name for f in outcome.signature.fields
                                       if (f.name in NUMERIC) == numeric]
                                      for numeric in (True, False)])
    np.testing.assert_allclose(np.asarray(proba), outcome.pipeline.predict_proba(frame),
                               rtol=0, atol=1e-12)
    assert outcome.params()["exclude"] == "Sex"
    assert outcome.metrics["exclude"] == ["Sex"]
    assert "Sex" not in [f["feature"] for f in outcome.importance["features"]]


def test_report_compares_with_and_without(without_sex: TrainingOutcome) -> None:
    report = without_sex.fairness
    assert report["trained_without"] == ["Sex"]
    comparison = report["comparison"]
    assert comparison["trained_without"] == [] and comparison["family"] == \
        "logistic_regression"
    # Still grouped by Sex although the model never saw it.
    assert [a["name"] for a in report["attributes"]] == ["sex", "age"]
    assert [a["name"] for a in comparison["attributes"]] == ["sex", "age"]
    # The comparison is a real model with every column: trained with Sex, this family
    # approves women at a lower rate relative to men than the model trained without it.
    ratio = {name: next(a for a in r["attributes"] if a["name"] == "sex")["summary"][
        "selection_rate"]["ratio"] for name, r in (("without", report), ("with", comparison))}
    assert ratio["without"] > ratio["with"]
    assert 0.5 < comparison["heldout_roc_auc"] < 1 and 0 < comparison["threshold"] < 1
    json.dumps(report, allow_nan=False)


def test_a_default_training_has_no_exclude_parameter(outcome: TrainingOutcome) -> None:
    """Versions trained before model.exclude existed keep their training identity."""
    assert "exclude" not in outcome.params()
