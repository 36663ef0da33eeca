"""The model card of a version: what a reviewer asks for, gathered from the registry, the
version's package, the promotion requests and the deployments.

One ``ModelCard`` feeds both forms: the HTML page (templates/registry/card.html) and the
downloadable Markdown file (templates/registry/card.md). The fixed texts (intended use,
reason-code method, limitations) live here so both forms say the same words.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from app.db import Deployment, Promotion, utcnow
from app.extensions import db
from app.labels import METRICS, family_label

INTENDED_USE = (
    "Scores an application for consumer credit with the probability that the applicant turns "
    "out a bad risk, and labels it \u201cbad\u201d when that probability reaches the decision "
    "threshold. It supports a credit officer's decision on applications like those it was "
    "trained on (German consumer credit, the Statlog German Credit data of 1994); it is not "
    "meant to decide alone, to set prices or limits, or to score populations or products "
    "unlike its training data."
)

REASON_CODE_METHOD = (
    "Asked with \u201cexplain\u201d, the scoring service gives the factors behind each "
    "prediction in the log-odds of \u201cbad\u201d: a base value plus one contribution per "
    "input field, which sum to the model's log-odds for that record. For logistic regression "
    "the contributions are exact: the log-odds are a sum of terms over the encoded features, "
    "and each field's contribution is the sum of its encoded features' terms, measured from "
    "the base. For gradient boosting they are exact TreeSHAP values computed on the model's "
    "trees. The largest contributions that raise the risk are the principal reasons for an "
    "adverse decision; a field the model was trained without contributes nothing."
)

LIMITATIONS: tuple[str, ...] = (
    "The training data are 1,000 applications from one German bank, collected before 1994; "
    "lending practice, prices and populations have changed since.",
    "Every held-out figure comes from a few hundred applicants; the smaller groups in the "
    "fairness report hold a few dozen, so their rates are uncertain (see the intervals) and "
    "those below the minimum group size are not judged.",
    "Leaving a protected attribute out of training does not remove its influence: other "
    "inputs (age, job, housing, purpose) can stand in for it. The fairness report measures "
    "outcomes by group for that reason.",
    "The decision threshold minimises expected cost under the configured cost matrix; other "
    "costs call for another threshold.",
    "Probabilities are calibrated on the held-out data as the calibration figures show, not "
    "guaranteed for applicants unlike the training data.",
)

_HELDOUT = ("roc_auc", "accuracy", "precision_bad", "recall_bad", "f1_bad", "brier",
            "expected_cost", "expected_cost_at_0_5")


@dataclass(frozen=True)
class ServedIn:
    """One slot that ran the version."""

    environment: str
    slot: str
    state: str
    activated_at: datetime | None
    stopped_at: datetime | None
    job_id: str | None


@dataclass(frozen=True)
class ModelCard:
    """Everything the card shows; ``fairness`` None when the version has no report."""

    name: str
    version: str
    family: str
    created_at: datetime
    run_id: str | None
    code_version: str | None
    job_id: str | None
    dataset: Mapping[str, Any]
    training: Mapping[str, Any]
    inputs: tuple[str, ...]
    excluded: tuple[str, ...]
    heldout: tuple[tuple[str, str, float | None], ...]
    candidates: tuple[Mapping[str, Any], ...]
    decision: Mapping[str, Any]
    fairness: Mapping[str, Any] | None
    gate: Mapping[str, Any] | None
    approvals: tuple[Promotion, ...]
    served: tuple[ServedIn, ...]
    aliases: tuple[str, ...]
    generated_at: datetime = field(default_factory=utcnow)
    error: str = ""
    intended_use: str = INTENDED_USE
    reason_code_method: str = REASON_CODE_METHOD
    limitations: tuple[str, ...] = LIMITATIONS

    @property
    def file_name(self) -> str:
        """The downloaded file's name."""
        return re.sub(r"[^A-Za-z0-9._-]", "_", f"{self.name}-v{self.version}-model-card.md")


def build(name: str, version: str) -> ModelCard:
    """Gather the card of one version.

    Raises:
        NotFound: the version is not registered.
    """
    from app.errors import ServiceUnavailable
    from app.ml.training import feature_names
    from app.services import fairness, models

    info = models.get_version(name, version)
    charts = models.chart_data(info)
    metrics = charts.metrics
    lineage = models.lineage(info)
    try:
        report = fairness.report(info)
        gate: Mapping[str, Any] | None = fairness.gate(info, report).to_dict()
    except ServiceUnavailable as exc:
        report, gate = None, None
        charts_error = exc.message
    else:
        charts_error = charts.error
    excluded = tuple(metrics.get("exclude") or ())
    held = metrics.get("heldout") or {}
    cost = metrics.get("cost_matrix") or {}
    return ModelCard(
        name=name, version=info.version,
        family=family_label(info.tags.get("family") or metrics.get("family") or "?"),
        created_at=info.created_at, run_id=info.run_id,
        code_version=lineage.get("code_version"), job_id=lineage.get("job_id"),
        dataset=lineage["dataset"],
        training={"n_train": metrics.get("n_train"), "n_test": metrics.get("n_test"),
                  "test_size": metrics.get("test_size"), "seed": metrics.get("seed"),
                  "cv_folds": metrics.get("cv_folds"), "selection": metrics.get("selection"),
                  "cv_roc_auc": (metrics.get("cv") or {}).get("roc_auc_mean"),
                  "cv_roc_auc_std": (metrics.get("cv") or {}).get("roc_auc_std")},
        inputs=tuple(c for c in feature_names() if c not in excluded), excluded=excluded,
        heldout=tuple((key, METRICS[key][0], _float(held.get(key, info.metrics.get(key))))
                      for key in _HELDOUT),
        candidates=tuple(metrics.get("candidates") or ()),
        decision={"threshold": _float(metrics.get("threshold", info.metrics.get("threshold"))),
                  "bad_as_good": cost.get("bad_as_good"), "good_as_bad": cost.get("good_as_bad"),
                  "expected_cost": _float(held.get("expected_cost")),
                  "expected_cost_at_0_5": _float(held.get("expected_cost_at_0_5")),
                  "expected_cost_all_good": _float(held.get("expected_cost_all_good")),
                  "confusion": (held.get("confusion_matrix") or {})},
        fairness=report, gate=gate,
        approvals=tuple(db.session.scalars(
            select(Promotion).where(Promotion.model_name == name,
                                    Promotion.model_version == info.version,
                                    Promotion.kind == "model")
            .order_by(Promotion.requested_at))),
        served=tuple(ServedIn(r.environment, r.slot, r.state, r.activated_at, r.stopped_at,
                              r.job_id)
                     for r in db.session.scalars(
                         select(Deployment).where(Deployment.model_name == name,
                                                  Deployment.model_version == info.version)
                         .order_by(Deployment.created_at))),
        aliases=info.aliases,
        error=charts_error,
    )


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def md_cell(value: Any) -> str:
    """A value as one Markdown table cell: no line breaks, pipes escaped."""
    text = "–" if value is None else str(value)
    return " ".join(text.split()).replace("\\", "\\\\").replace("|", "\\|")
