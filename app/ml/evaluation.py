"""Cost-aware threshold choice and the metrics stored with a model (numpy/scikit-learn)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

POSITIVE = "bad"
NEGATIVE = "good"


@dataclass(frozen=True)
class CostMatrix:
    """Misclassification costs (Statlog German Credit: bad-as-good 5, good-as-bad 1)."""

    bad_as_good: float = 5.0  # a bad risk predicted good (false negative for "bad")
    good_as_bad: float = 1.0  # a good risk predicted bad (false positive for "bad")

    @property
    def bayes_threshold(self) -> float:
        """The cost-optimal threshold on P(bad) for perfectly calibrated probabilities."""
        total = self.bad_as_good + self.good_as_bad
        return self.good_as_bad / total if total else 0.5


def _counts(y_bad: Any, p_bad: Any, threshold: float) -> tuple[int, int, int, int]:
    """Return (tp, fn, fp, tn) for "bad" predicted when P(bad) >= threshold."""
    import numpy as np

    pred = np.asarray(p_bad) >= threshold
    y = np.asarray(y_bad, dtype=bool)
    return (int((y & pred).sum()), int((y & ~pred).sum()),
            int((~y & pred).sum()), int((~y & ~pred).sum()))


def expected_cost(y_bad: Any, p_bad: Any, threshold: float, cost: CostMatrix) -> float:
    """Return the average cost per applicant at ``threshold``."""
    _tp, fn, fp, _tn = _counts(y_bad, p_bad, threshold)
    n = len(y_bad)
    return (cost.bad_as_good * fn + cost.good_as_bad * fp) / n if n else 0.0


def choose_threshold(y_bad: Any, p_bad: Any, cost: CostMatrix) -> float:
    """Return the threshold on P(bad) that minimises the cost on these (out-of-fold) scores.

    Candidates are 0, 1 and the midpoints between consecutive distinct scores, so the
    threshold never sits exactly on a training score. Ties go to the candidate closest to
    the Bayes threshold, which keeps the choice deterministic and robust.
    """
    import numpy as np

    y = np.asarray(y_bad, dtype=bool)
    p = np.asarray(p_bad, dtype="float64")
    distinct = np.unique(p)
    cands = np.concatenate(([0.0], (distinct[:-1] + distinct[1:]) / 2, [1.0]))
    # Sorted scores + cumulative counts: O(n log n) instead of a candidates x samples matrix.
    order = np.argsort(p, kind="stable")
    bad_sorted = y[order]
    cum_bad = np.concatenate(([0], np.cumsum(bad_sorted)))
    cum_good = np.concatenate(([0], np.cumsum(~bad_sorted)))
    below = np.searchsorted(p[order], cands, side="left")  # scores predicted "good"
    fn = cum_bad[below]
    fp = cum_good[-1] - cum_good[below]
    costs = cost.bad_as_good * fn + cost.good_as_bad * fp
    best = np.flatnonzero(costs == costs.min())
    pick = best[np.argmin(np.abs(cands[best] - cost.bayes_threshold))]
    return float(cands[pick])


def heldout_metrics(y_bad: Any, p_bad: Any, threshold: float, cost: CostMatrix) -> dict[str, Any]:
    """Return held-out metrics for "bad" as the positive class at ``threshold``."""
    import numpy as np
    from sklearn.metrics import brier_score_loss, roc_auc_score

    y = np.asarray(y_bad, dtype=bool)
    p = np.asarray(p_bad, dtype="float64")
    tp, fn, fp, tn = _counts(y, p, threshold)
    n = len(y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "accuracy": (tp + tn) / n,
        "precision_bad": precision,
        "recall_bad": recall,
        "f1_bad": f1,
        "brier": float(brier_score_loss(y, p)),
        "expected_cost": expected_cost(y, p, threshold, cost),
        "expected_cost_at_0_5": expected_cost(y, p, 0.5, cost),
        "expected_cost_all_good": cost.bad_as_good * int(y.sum()) / n,
        "threshold": threshold,
        "n": n,
        "confusion_matrix": {
            "labels": [POSITIVE, NEGATIVE],
            "rows": "actual",
            "columns": "predicted",
            "matrix": [[tp, fn], [fp, tn]],
            "actual_bad_predicted_bad": tp,
            "actual_bad_predicted_good": fn,
            "actual_good_predicted_bad": fp,
            "actual_good_predicted_good": tn,
        },
    }


def roc_data(y_bad: Any, p_bad: Any) -> dict[str, Any]:
    """Return ROC curve points for P(bad) (JSON-safe: no infinite thresholds)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, thresholds = roc_curve(y_bad, p_bad, pos_label=True)
    return {
        "positive_class": POSITIVE,
        "auc": float(roc_auc_score(y_bad, p_bad)),
        "fpr": [float(v) for v in fpr],
        "tpr": [float(v) for v in tpr],
        # scikit-learn starts with +inf ("nothing predicted bad"); 1.0 says the same in JSON.
        "thresholds": [min(float(v), 1.0) if math.isfinite(v) else 1.0 for v in thresholds],
    }


def calibration_data(y_bad: Any, p_bad: Any, bins: int) -> dict[str, Any]:
    """Return a reliability diagram of P(bad): equal-width bins with their counts."""
    import numpy as np
    from sklearn.metrics import brier_score_loss

    y = np.asarray(y_bad, dtype=bool)
    p = np.asarray(p_bad, dtype="float64")
    edges = np.linspace(0.0, 1.0, bins + 1)
    # The last bin is closed so P(bad) = 1.0 lands in it.
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        mask = idx == b
        count = int(mask.sum())
        if count == 0:
            continue
        out.append({
            "lower": float(edges[b]),
            "upper": float(edges[b + 1]),
            "count": count,
            "mean_predicted": float(p[mask].mean()),
            "observed_rate": float(y[mask].mean()),
        })
    return {"positive_class": POSITIVE, "strategy": "uniform", "n_bins": bins,
            "brier": float(brier_score_loss(y, p)), "bins": out}


def importance_data(pipeline: Any, X: Any, y: Any, columns: Sequence[str], repeats: int,
                    seed: int) -> dict[str, Any]:
    """Return permutation importance on held-out data, by original column (drop in ROC AUC)."""
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import roc_auc_score

    idx = list(pipeline.classes_).index(POSITIVE)

    def auc_bad(estimator: Any, X_: Any, y_: Any) -> float:
        # Scored on P(bad) read by class name, never by column position.
        return float(roc_auc_score(y_ == POSITIVE, estimator.predict_proba(X_)[:, idx]))

    result = permutation_importance(pipeline, X[list(columns)], y, scoring=auc_bad,
                                    n_repeats=repeats, random_state=seed, n_jobs=1)
    features: list[dict[str, Any]] = [
        {"feature": col, "importance_mean": float(m), "importance_std": float(s)}
        for col, m, s in zip(columns, result.importances_mean, result.importances_std,
                             strict=True)
    ]
    features.sort(key=lambda f: (-f["importance_mean"], f["feature"]))
    return {"method": "permutation", "scoring": "roc_auc", "data": "held-out",
            "n_repeats": repeats, "features": features}
