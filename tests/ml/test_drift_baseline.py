"""The training baseline: stored with the outcome, reproducible from the registered data."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.ml.drift import SCORE_FIELD, Baseline, baseline_from_dataset
from app.ml.training import TrainingOutcome


def test_training_records_a_baseline_of_every_field_and_the_score(
        outcome: TrainingOutcome) -> None:
    baseline = Baseline.from_dict(outcome.baseline)
    assert [b.field for b in baseline.fields] == list(outcome.signature.feature_names)
    assert baseline.score.field == SCORE_FIELD
    assert baseline.rows == outcome.metrics["n_train"]
    assert baseline.score_rows == outcome.metrics["n_test"]
    for bins in (*baseline.fields, baseline.score):
        assert sum(bins.proportions) == pytest.approx(1.0), bins.field
    # Categorical bins are the signature's categories, plus "none" for nullable fields.
    saving = baseline.field("Saving accounts")
    spec = next(f for f in outcome.signature.fields if f.name == "Saving accounts")
    assert saving.categories == (*spec.categories, None)
    # Deciles of the training part: every Credit amount bin holds a tenth of it.
    assert baseline.field("Credit amount").proportions == pytest.approx([0.1] * 10, abs=0.01)


def test_the_baseline_is_recomputed_exactly_from_the_registered_data(
        outcome: TrainingOutcome, csv_path: Path) -> None:
    again = baseline_from_dataset(outcome.pipeline, outcome.signature, csv_path,
                                  seed=outcome.config.seed, test_size=outcome.config.test_size)
    assert again.source == "registered data"
    stored = Baseline.from_dict(outcome.baseline)
    assert again.fields == stored.fields
    assert again.score == stored.score
