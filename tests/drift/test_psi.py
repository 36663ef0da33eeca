"""PSI against hand-checked figures, the bands' edges, and how fields are binned."""

from __future__ import annotations

import math

import pytest

from app.ml.drift import (
    EPSILON,
    Band,
    Bands,
    Baseline,
    FieldBins,
    categorical_bins,
    compare,
    numeric_bins,
    psi,
    shares,
)


def test_psi_of_a_hand_checked_example() -> None:
    # Baseline 25 % in each of four bins; the sample holds 10, 20, 30 and 40 records.
    # By hand: (0.1-0.25)·ln(0.1/0.25) = -0.15 · -0.9162907 = 0.1374436
    #          (0.2-0.25)·ln(0.2/0.25) = -0.05 · -0.2231436 = 0.0111572
    #          (0.3-0.25)·ln(0.3/0.25) =  0.05 ·  0.1823216 = 0.0091161
    #          (0.4-0.25)·ln(0.4/0.25) =  0.15 ·  0.4700036 = 0.0705005
    #                                                  sum = 0.2282174
    assert shares([10, 20, 30, 40]) == [0.1, 0.2, 0.3, 0.4]
    assert psi([0.25] * 4, shares([10, 20, 30, 40])) == pytest.approx(0.2282174, abs=1e-7)


def test_an_empty_bin_is_floored_not_infinite() -> None:
    # The baseline never saw bin 3; its share counts as EPSILON = 0.0001:
    # (0.3-0.5)·ln(0.3/0.5) = 0.1021651; (0.2-0.0001)·ln(0.2/0.0001) = 0.1999 · 7.6009025
    # = 1.5194204; total 1.6215855.
    assert EPSILON == 1e-4
    assert psi([0.5, 0.5, 0.0], [0.5, 0.3, 0.2]) == pytest.approx(1.6215855, abs=1e-6)
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0


def test_psi_is_symmetric_in_its_terms_and_refuses_mismatched_bins() -> None:
    a, b = [0.2, 0.3, 0.5], [0.4, 0.4, 0.2]
    assert psi(a, b) == pytest.approx(psi(b, a))
    with pytest.raises(ValueError):
        psi([0.5, 0.5], [1.0])
    with pytest.raises(ValueError):
        psi([], [])


@pytest.mark.parametrize(("value", "band"), [
    (0.0, Band.STABLE), (0.0999, Band.STABLE), (0.1, Band.WATCH), (0.2, Band.WATCH),
    (0.25, Band.WATCH), (0.2501, Band.ACT), (3.0, Band.ACT)])
def test_usual_bands(value: float, band: Band) -> None:
    assert Bands().of(value) is band


def test_bands_are_configurable_and_ranked() -> None:
    bands = Bands(watch=0.05, act=0.5)
    assert [bands.of(v) for v in (0.04, 0.05, 0.5, 0.51)] == [
        Band.STABLE, Band.WATCH, Band.WATCH, Band.ACT]
    assert Band.STABLE.rank < Band.WATCH.rank < Band.ACT.rank


def test_numeric_bins_at_the_quantiles() -> None:
    # Quartiles of 1..20 (linear interpolation): 5.75, 10.5, 15.25 → five values per bin.
    bins = numeric_bins("x", list(range(1, 21)), bins=4)
    assert bins.edges == (5.75, 10.5, 15.25)
    assert bins.proportions == (0.25, 0.25, 0.25, 0.25)
    assert bins.labels == ["≤ 5.75", "5.75–10.5", "10.5–15.25", "> 15.25"]
    assert bins.counts([5.75, 5.76, 100, -3]) == [2, 1, 0, 1]


def test_few_distinct_values_get_a_bin_each() -> None:
    bins = numeric_bins("Job", [0, 1, 1, 2, 2, 2], bins=10)
    assert bins.edges == (0.0, 1.0)
    assert bins.labels == ["≤ 0", "0–1", "> 1"]
    assert bins.proportions == pytest.approx((1 / 6, 2 / 6, 3 / 6))


def test_categorical_bins_with_no_value() -> None:
    bins = categorical_bins("Saving", ["a", None, "b", "a"], ["a", "b", "c"], nullable=True)
    assert bins.labels == ["a", "b", "c", "none"]
    assert bins.proportions == (0.5, 0.25, 0.0, 0.25)
    assert bins.counts(["c", None, "unknown"]) == [0, 0, 1, 1]


def test_baseline_round_trip_and_compare() -> None:
    age = numeric_bins("Age", [20, 30, 40, 50], bins=4)
    sex = categorical_bins("Sex", ["male", "female"], ["female", "male"])
    score = numeric_bins("P(bad)", [0.1, 0.2, 0.3, 0.4], bins=4)
    baseline = Baseline((age, sex), score, rows=4, score_rows=4)
    again = Baseline.from_dict(baseline.to_dict())
    assert again == baseline
    assert again.field("Sex") == sex
    # The same population: nothing moved. Everyone 20 years older: Age acts.
    same, same_score = compare(baseline, [{"Age": a, "Sex": s} for a, s in
                                          ((20, "male"), (30, "female"), (40, "male"),
                                           (50, "female"))], [0.1, 0.2, 0.3, 0.4])
    assert [d.psi for d in same] == [0.0, 0.0] and same_score.psi == 0.0
    older, _ = compare(baseline, [{"Age": 70, "Sex": "male"}, {"Age": 70, "Sex": "female"}],
                       [0.1, 0.4])
    assert older[0].band is Band.ACT and older[1].band is Band.STABLE
    # Three of four bins emptied, one holds all: 3·(0.0001-0.25)·ln(0.0004) + 0.75·ln(4).
    expected = 3 * (EPSILON - 0.25) * math.log(EPSILON / 0.25) + 0.75 * math.log(4)
    assert older[0].psi == pytest.approx(expected)
    assert older[0].to_dict()["bins"][-1] == {"label": "> 40", "expected": 0.25, "actual": 1.0}


def test_malformed_baselines_are_refused() -> None:
    with pytest.raises(ValueError):
        Baseline.from_dict({"format": 99, "fields": [], "score": {}, "rows": 0,
                            "score_rows": 0})
    with pytest.raises(ValueError):
        FieldBins.from_dict({"field": "x", "kind": "numeric", "edges": [1.0],
                             "proportions": [1.0]})
    with pytest.raises(ValueError):
        Baseline.from_dict({"format": 1})
