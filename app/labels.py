"""The one table of what the panel calls things: metric keys and states as people read them.

Templates use the Jinja filters registered by ``register`` (``metric_label``, ``state_label``,
``plural``); no page shows a raw metric key, enum value or Python repr.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

# Metric key → (label, whether higher is better; None: neither), in the order tables show them.
METRICS: dict[str, tuple[str, bool | None]] = {
    "roc_auc": ("ROC AUC (held-out)", True),
    "cv_roc_auc": ("ROC AUC (cross-validated)", True),
    "accuracy": ("Accuracy", True),
    "precision_bad": ("Precision (bad)", True),
    "recall_bad": ("Recall (bad)", True),
    "f1_bad": ("F1 (bad)", True),
    "brier": ("Brier score", False),
    "expected_cost": ("Expected cost (held-out)", False),
    "cv_expected_cost": ("Expected cost (cross-validated)", False),
    "expected_cost_at_0_5": ("Expected cost at 0.5", False),
    "threshold": ("Threshold on P(bad)", None),
    "heldout_roc_auc": ("ROC AUC (held-out)", True),
    "cv_roc_auc_mean": ("ROC AUC (cross-validated)", True),
    "cv_roc_auc_std": ("ROC AUC spread across folds (std)", False),
}

# Metrics shown in the summary tables (registry, compare), in order.
SUMMARY_METRICS: tuple[tuple[str, str, bool | None], ...] = tuple(
    (key, label, higher) for key, (label, higher) in METRICS.items()
    if key not in ("heldout_roc_auc", "cv_roc_auc_mean", "cv_roc_auc_std", "cv_expected_cost"))

FAMILIES: dict[str, str] = {
    "logistic_regression": "Logistic regression",
    "gradient_boosting": "Gradient boosting",
    "hist_gradient_boosting": "Histogram gradient boosting",
    "random_forest": "Random forest",
}

# Job, deployment, promotion and health states → label.
STATES: dict[str, str] = {
    "NOT_RUN": "Not run",
    "WAITING": "Waiting",
    "QUEUED": "Queued",
    "RUNNING": "Running",
    "SUCCEEDED": "Succeeded",
    "FAILED": "Failed",
    "CANCELLED": "Cancelled",
    "STARTING": "Starting",
    "ACTIVE": "Active",
    "DRAINING": "Draining",
    "STOPPED": "Stopped",
    "PENDING": "Pending",
    "APPROVED": "Approved",
    "REJECTED": "Rejected",
    "EXPIRED": "Expired",
    "SUPERSEDED": "Superseded",
    "READY": "Ready",
    "healthy": "Healthy",
    "degraded": "Degraded",
    "down": "Down",
    "stopped": "Stopped",
    "unknown": "Unknown",
}


# Drift bands (app.ml.drift.Band) → (label, what it asks of people).
DRIFT_BANDS: dict[str, tuple[str, str]] = {
    "stable": ("Stable", "PSI below the watch threshold: scored applicants look like the "
                         "training data"),
    "watch": ("Watch", "PSI between the watch and act thresholds: a moderate shift; keep an "
                       "eye on it"),
    "act": ("Act", "PSI above the act threshold: applicants no longer look like the training "
                   "data; review the model and consider retraining"),
}


def band_label(band: str) -> str:
    """A drift band as people read it (``act`` → ``Act``)."""
    known = DRIFT_BANDS.get(str(band))
    return known[0] if known else str(band).capitalize()


def band_meaning(band: str) -> str:
    """What a drift band means, in a sentence."""
    known = DRIFT_BANDS.get(str(band))
    return known[1] if known else ""


# Input fields of the credit model → label, and how their values read (data/README.md).
FIELDS: dict[str, str] = {
    "Age": "Age",
    "Sex": "Sex",
    "Job": "Job",
    "Housing": "Housing",
    "Saving accounts": "Savings account",
    "Checking account": "Checking account",
    "Credit amount": "Credit amount",
    "Duration": "Duration",
    "Purpose": "Purpose",
}
JOB_LEVELS: dict[int, str] = {0: "unskilled, non-resident", 1: "unskilled, resident",
                              2: "skilled", 3: "highly skilled"}
_UNITS: dict[str, str] = {"Age": "years", "Credit amount": "DM", "Duration": "months"}
# Reason-code directions (the scoring API's `direction`) as a sentence ends.
DIRECTIONS: dict[str, str] = {"raises": "raises the risk", "lowers": "lowers the risk",
                              "neutral": "no effect on the risk"}


def field_label(name: str) -> str:
    """An input field as people read it (``Saving accounts`` → ``Savings account``)."""
    return FIELDS.get(name, name)


def field_value_label(name: str, value: Any) -> str:
    """A field's value as people read it: ``no account``, ``48 months``, ``skilled``."""
    if value is None or value == "":
        return "no account" if name.endswith(("account", "accounts")) else "not given"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if name == "Job" and isinstance(value, int) and value in JOB_LEVELS:
        return JOB_LEVELS[value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        unit = _UNITS.get(name)
        number = f"{value:,}"
        return f"{number} {unit}" if unit else number
    return str(value)


def reason_sentence(factor: Any) -> str:
    """One reason code as a credit officer says it: ``Checking account: little — raises the risk``.

    ``factor`` is an item of a prediction's ``reasons.factors`` (field, value, direction).
    """
    name = str(factor.get("field", ""))
    direction = str(factor.get("direction", ""))
    ending = DIRECTIONS.get(direction, direction)
    return f"{field_label(name)}: {field_value_label(name, factor.get('value'))} — {ending}"


def family_label(family: str) -> str:
    """A model family as people read it (``gradient_boosting`` → ``Gradient boosting``)."""
    return FAMILIES.get(family, family.replace("_", " ").capitalize())


def metric_label(key: str) -> str:
    """A metric key as people read it; ``family.metric`` keys name the candidate family."""
    family, dot, metric = key.rpartition(".")
    if dot and family:
        return f"{family_label(family)}: {metric_label(metric)}"
    known = METRICS.get(key)
    return known[0] if known else key.replace("_", " ").capitalize()


def higher_is_better(key: str) -> bool | None:
    """Whether a larger value of the metric is better (None: neither, or unknown)."""
    known = METRICS.get(key.rpartition(".")[2])
    return known[1] if known else None


def state_label(state: Any) -> str:
    """A state or status (job, deployment, promotion, health) as people read it."""
    text = str(getattr(state, "value", state) or "")
    return STATES.get(text, text.replace("_", " ").capitalize())


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``1 problem``, ``2 problems``."""
    return f"{count} {singular if count == 1 else (plural_form or singular + 's')}"


def age_label(days: float | None) -> str:
    """An age in days as people read it: ``under an hour``, ``5 hours``, ``3 days``."""
    if days is None:
        return "–"
    hours = days * 24
    if hours < 1:
        return "under an hour"
    if hours < 48:
        return plural(int(hours), "hour")
    return plural(int(days), "day")


def register(app: Flask) -> None:
    """Make the table available to every template as filters."""
    app.jinja_env.filters.update(metric_label=metric_label, state_label=state_label,
                                 plural=plural, age_label=age_label,
                                 family_label=family_label, field_label=field_label,
                                 reason_sentence=reason_sentence, band_label=band_label,
                                 band_meaning=band_meaning)
