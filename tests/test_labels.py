"""The one label table: metric keys, states, counts and ages as people read them."""

from __future__ import annotations

import pytest

from app.db import JobStatus
from app.labels import age_label, metric_label, plural, state_label


@pytest.mark.parametrize("key,label", [
    ("cv_expected_cost", "Expected cost (cross-validated)"),
    ("roc_auc", "ROC AUC (held-out)"),
    ("gradient_boosting.heldout_roc_auc", "Gradient boosting: ROC AUC (held-out)"),
    ("logistic_regression.cv_roc_auc", "Logistic regression: ROC AUC (cross-validated)"),
    ("cv_roc_auc_std", "ROC AUC spread across folds (std)"),
    ("something_new", "Something new"),
])
def test_metric_keys_read_as_labels(key: str, label: str) -> None:
    assert metric_label(key) == label


def test_states_counts_and_ages_read_as_words() -> None:
    assert state_label("NOT_RUN") == "Not run"
    assert state_label(JobStatus.SUCCEEDED) == "Succeeded"
    assert state_label("healthy") == "Healthy"
    assert (plural(1, "problem"), plural(2, "problem")) == ("1 problem", "2 problems")
    assert age_label(0.0) == "under an hour"
    assert age_label(0.5) == "12 hours"
    assert age_label(3.2) == "3 days"
