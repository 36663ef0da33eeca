"""The fairness report of a model version: held-out outcomes by group, with fairlearn.

The favourable outcome is an approval: the model predicts "good" (P(bad) below the threshold).
For each configured attribute (the pipeline file's ``fairness.groups``: ``Sex``, age bands) the
report gives, per group, with counts and Wilson confidence intervals:

- the selection rate: the share of the group's applicants approved;
- the true positive rate (TPR): the share of the group's actually-good applicants approved;
- the false positive rate (FPR): the share of the group's actually-bad applicants approved;
- calibration: mean predicted P(bad) against the observed bad rate, overall and in bins;

and, across groups, the gaps (largest minus smallest) and ratios (smallest over largest; the
four-fifths rule asks for a selection-rate ratio of at least 0.8) and the equalised-odds gap
(the larger of the TPR and FPR gaps). The held-out groups are small, so a rate whose
denominator holds fewer than ``min_group_size`` applicants is shown but marked not meaningful,
and gaps and ratios use only the meaningful ones. Pure numpy/pandas/fairlearn: no Flask.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

logger = logging.getLogger(__name__)

FAVOURABLE = "good"
MISSING_GROUP = "missing"
# The three rates, each with the count it is a share of (its denominator).
RATES: tuple[tuple[str, str, str], ...] = (
    ("selection_rate", "n", "approved"),
    ("tpr", "actual_good", "approved_good"),
    ("fpr", "actual_bad", "approved_bad"),
)
RATE_LABELS: Mapping[str, str] = {
    "selection_rate": "Selection rate (approved)",
    "tpr": "TPR (good applicants approved)",
    "fpr": "FPR (bad applicants approved)",
}


class FairnessConfigError(ValueError):
    """The ``fairness:`` configuration is invalid; ``key`` names the offending entry."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


@dataclass(frozen=True)
class GroupSpec:
    """One attribute to compare groups by: a categorical column, or a numeric one in bands.

    ``bands`` are ascending edges: ``(25, 35, 50)`` makes the groups below 25, 25 to 34,
    35 to 49 and 50 or more (each band includes its lower edge).
    """

    name: str
    column: str
    bands: tuple[float, ...] = ()

    def labels(self) -> list[str]:
        """The band labels in order (empty for a categorical attribute)."""
        if not self.bands:
            return []
        edges = list(self.bands)
        whole = all(float(e).is_integer() for e in edges)

        def show(value: float) -> str:
            return f"{int(value)}" if whole else f"{value:g}"

        out = [f"under {show(edges[0])}"]
        for lo, hi in zip(edges, edges[1:], strict=False):
            out.append(f"{show(lo)}–{show(hi - 1)}" if whole else f"{show(lo)} to <{show(hi)}")
        out.append(f"{show(edges[-1])}+")
        return out

    def assign(self, values: Any) -> list[str]:
        """The group label of each value (a missing value is the group "missing")."""
        if not self.bands:
            return [MISSING_GROUP if _missing(v) else str(v) for v in values]
        labels = self.labels()
        out = []
        for v in values:
            if _missing(v):
                out.append(MISSING_GROUP)
                continue
            index = sum(1 for edge in self.bands if float(v) >= edge)
            out.append(labels[index])
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return the YAML form (``bands`` only for a numeric column)."""
        out: dict[str, Any] = {"column": self.column}
        if self.bands:
            out["bands"] = [int(b) if float(b).is_integer() else b for b in self.bands]
        return out


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _default_groups() -> tuple[GroupSpec, ...]:
    return (GroupSpec("sex", "Sex"), GroupSpec("age", "Age", (25, 35, 50)))


@dataclass(frozen=True)
class FairnessConfig:
    """What the fairness report compares (the pipeline file's ``fairness:`` section)."""

    groups: tuple[GroupSpec, ...] = field(default_factory=_default_groups)
    # A rate whose denominator holds fewer applicants is shown but not judged.
    min_group_size: int = 30
    confidence_level: float = 0.95
    calibration_bins: int = 5

    def to_dict(self) -> dict[str, Any]:
        """Return the YAML/JSON form accepted by :meth:`from_dict`."""
        return {"groups": {g.name: g.to_dict() for g in self.groups},
                "min_group_size": self.min_group_size,
                "confidence_level": self.confidence_level,
                "calibration_bins": self.calibration_bins}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, prefix: str = "fairness", *,
                  numeric: Sequence[str] = (), categorical: Sequence[str] = ()
                  ) -> FairnessConfig:
        """Validate a ``fairness:`` mapping (missing keys default).

        Args:
            data: the mapping.
            prefix: the dotted key errors are reported under.
            numeric, categorical: the model's input columns; a group's column must be one,
                and a numeric column needs ``bands``.

        Raises:
            FairnessConfigError: naming the bad key, e.g. ``fairness.groups.age.bands``.
        """
        return _parse(data or {}, prefix, tuple(numeric), tuple(categorical))


_KNOWN = ("groups", "min_group_size", "confidence_level", "calibration_bins")


def _parse(data: Mapping[str, Any], where: str, numeric: tuple[str, ...],
           categorical: tuple[str, ...]) -> FairnessConfig:
    if not isinstance(data, Mapping):
        raise FairnessConfigError(where, "must be a mapping with groups, min_group_size, "
                                         "confidence_level, calibration_bins")
    for key in data:
        if key not in _KNOWN:
            raise FairnessConfigError(f"{where}.{key}",
                                      f"unknown key; expected one of {', '.join(_KNOWN)}")
    base = FairnessConfig()
    groups = base.groups
    if "groups" in data:
        groups = _groups(data["groups"], f"{where}.groups", numeric, categorical)
    return FairnessConfig(
        groups=groups,
        min_group_size=int(_number(data, "min_group_size", where, 1, 10_000,
                                   base.min_group_size, integer=True)),
        confidence_level=float(_number(data, "confidence_level", where, 0.5, 0.999,
                                       base.confidence_level)),
        calibration_bins=int(_number(data, "calibration_bins", where, 2, 20,
                                     base.calibration_bins, integer=True)),
    )


def _groups(raw: Any, where: str, numeric: tuple[str, ...], categorical: tuple[str, ...]
            ) -> tuple[GroupSpec, ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise FairnessConfigError(where, "must be a mapping of attribute name to "
                                         "{column: …, bands: […]}, e.g. sex: {column: Sex}")
    out = []
    for name, spec in raw.items():
        at = f"{where}.{name}"
        if not isinstance(name, str) or not name.strip() or len(name) > 40:
            raise FairnessConfigError(at, "attribute names are 1-40 characters")
        if not isinstance(spec, Mapping):
            raise FairnessConfigError(at, "must be a mapping like {column: Sex} or "
                                          "{column: Age, bands: [25, 35, 50]}")
        for key in spec:
            if key not in ("column", "bands"):
                raise FairnessConfigError(f"{at}.{key}", "unknown key; expected one of "
                                                         "column, bands")
        column = spec.get("column")
        known = (*numeric, *categorical)
        if not isinstance(column, str) or (known and column not in known):
            raise FairnessConfigError(f"{at}.column", "must be one of the model's input "
                                                      f"columns: {', '.join(known)}")
        bands: tuple[float, ...] = ()
        if column in numeric:
            bands = _bands(spec.get("bands"), f"{at}.bands")
        elif spec.get("bands") is not None:
            raise FairnessConfigError(f"{at}.bands", f"{column} is categorical: each value "
                                                     "is a group, so it takes no bands")
        out.append(GroupSpec(name.strip(), column, bands))
    return tuple(out)


def _bands(raw: Any, where: str) -> tuple[float, ...]:
    ok = isinstance(raw, list | tuple) and 1 <= len(raw) <= 10 and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in raw)
    if not ok:
        raise FairnessConfigError(where, "a numeric column needs 1-10 band edges, "
                                         "e.g. [25, 35, 50]")
    if any(b <= a for a, b in zip(raw, raw[1:], strict=False)):
        raise FairnessConfigError(where, "band edges must increase")
    return tuple(float(v) for v in raw)


def _number(data: Mapping[str, Any], key: str, where: str, lo: float, hi: float,
            default: float, *, integer: bool = False) -> float:
    if key not in data:
        return default
    value = data[key]
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if integer:
        ok = ok and float(value).is_integer()
    if not ok or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise FairnessConfigError(f"{where}.{key}", f"must be {kind} {lo:g}..{hi:g}")
    return value


# --------------------------------------------------------------------------- statistics


def wilson_interval(successes: int, n: int, confidence: float = 0.95
                    ) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (None when n is 0).

    Unlike the normal approximation it stays inside [0, 1] and behaves at 0 and n successes,
    which small groups hit.
    """
    if n <= 0:
        return None
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _rate(successes: int, n: int, value: float | None, config: FairnessConfig
          ) -> dict[str, Any]:
    interval = wilson_interval(successes, n, config.confidence_level)
    return {"value": value if n else None, "successes": successes, "n": n,
            "low": interval[0] if interval else None,
            "high": interval[1] if interval else None,
            "meaningful": n >= config.min_group_size}


# --------------------------------------------------------------------------- the report


def _count_metrics() -> dict[str, Any]:
    """MetricFrame metrics over y_true = actually good, y_pred = approved (both 0/1)."""
    import numpy as np
    from fairlearn.metrics import (
        count,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )

    def actual_good(y_true: Any, y_pred: Any) -> int:
        return int(np.sum(y_true))

    def approved_good(y_true: Any, y_pred: Any) -> int:
        return int(np.sum(np.asarray(y_true) & np.asarray(y_pred)))

    def approved_bad(y_true: Any, y_pred: Any) -> int:
        return int(np.sum(~np.asarray(y_true, dtype=bool) & np.asarray(y_pred, dtype=bool)))

    def approved(y_true: Any, y_pred: Any) -> int:
        return int(np.sum(y_pred))

    return {"selection_rate": selection_rate, "tpr": true_positive_rate,
            "fpr": false_positive_rate, "n": count, "approved": approved,
            "actual_good": actual_good, "approved_good": approved_good,
            "approved_bad": approved_bad}


def _calibration_metrics() -> dict[str, Any]:
    """MetricFrame metrics over y_true = actually bad (0/1), y_pred = P(bad)."""
    import numpy as np
    from fairlearn.metrics import mean_prediction

    def observed_bad(y_true: Any, y_pred: Any) -> float:
        return float(np.mean(y_true))

    return {"mean_predicted_bad": mean_prediction, "observed_bad": observed_bad}


def _bins(y_bad: Any, p_bad: Any, bins: int) -> list[dict[str, Any]]:
    import numpy as np

    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, p_bad, side="right") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            out.append({"lower": float(edges[b]), "upper": float(edges[b + 1]),
                        "count": int(mask.sum()), "mean_predicted": float(p_bad[mask].mean()),
                        "observed_rate": float(y_bad[mask].mean())})
    return out


def _summary(groups: list[dict[str, Any]], metric: str,
             all_groups: Mapping[str, float | None]) -> dict[str, Any]:
    """Gap and ratio of one rate across the groups where it is meaningful."""
    judged = [g for g in groups if g[metric]["meaningful"] and g[metric]["value"] is not None]
    out: dict[str, Any] = {"difference_all_groups": all_groups["difference"],
                           "ratio_all_groups": all_groups["ratio"],
                           "groups_compared": [g["group"] for g in judged],
                           "meaningful": len(judged) >= 2}
    if len(judged) < 2:
        out.update(difference=None, ratio=None, lowest=None, highest=None,
                   intervals_overlap=None)
        return out
    low = min(judged, key=lambda g: g[metric]["value"])
    high = max(judged, key=lambda g: g[metric]["value"])
    lo, hi = low[metric]["value"], high[metric]["value"]
    out.update(difference=hi - lo, ratio=(lo / hi) if hi > 0 else None,
               lowest=low["group"], highest=high["group"],
               # Overlapping intervals: the gap may be chance at this confidence level.
               intervals_overlap=bool(low[metric]["high"] >= high[metric]["low"]))
    return out


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _attribute(spec: GroupSpec, frame: Any, y_good: Any, approved: Any, y_bad: Any,
               p_bad: Any, config: FairnessConfig) -> dict[str, Any]:
    import numpy as np
    from fairlearn.metrics import MetricFrame

    labels = np.asarray(spec.assign(frame[spec.column].tolist()), dtype=object)
    counts = MetricFrame(metrics=_count_metrics(), y_true=y_good, y_pred=approved,
                         sensitive_features={spec.name: labels})
    calibration = MetricFrame(metrics=_calibration_metrics(), y_true=y_bad, y_pred=p_bad,
                              sensitive_features={spec.name: labels})
    order = spec.labels() or sorted(set(labels.tolist()) - {MISSING_GROUP})
    present = [g for g in [*order, MISSING_GROUP] if g in set(labels.tolist())]
    by_group = counts.by_group
    cal = calibration.by_group
    differences, ratios = counts.difference(), counts.ratio()
    groups = []
    for name in present:
        row = by_group.loc[name]
        counts_of = {k: int(row[k]) for k in ("n", "approved", "actual_good", "approved_good",
                                              "approved_bad")}
        counts_of["actual_bad"] = counts_of["n"] - counts_of["actual_good"]
        mask = labels == name
        entry: dict[str, Any] = {"group": name, **counts_of}
        for metric, denominator, numerator in RATES:
            entry[metric] = _rate(counts_of[numerator], counts_of[denominator],
                                  _finite(row[metric]), config)
        observed = _rate(counts_of["actual_bad"], counts_of["n"],
                         _finite(cal.loc[name]["observed_bad"]), config)
        mean_predicted = _finite(cal.loc[name]["mean_predicted_bad"])
        entry["calibration"] = {
            "mean_predicted_bad": mean_predicted, "observed_bad": observed,
            "gap": (mean_predicted - observed["value"])
            if mean_predicted is not None and observed["value"] is not None else None,
            "bins": _bins(y_bad[mask], p_bad[mask], config.calibration_bins)}
        groups.append(entry)
    summary = {metric: _summary(groups, metric,
                                {"difference": _finite(differences[metric]),
                                 "ratio": _finite(ratios[metric])})
               for metric, _, _ in RATES}
    parts = [m for m in ("tpr", "fpr") if summary[m]["meaningful"]]
    summary["equalized_odds_gap"] = {
        "value": max(summary[m]["difference"] for m in parts) if parts else None,
        "parts": parts, "meaningful": bool(parts),
        "all_groups": max(v for v in (_finite(differences["tpr"]),
                                      _finite(differences["fpr"]), 0.0) if v is not None)}
    return {"name": spec.name, "column": spec.column,
            "bands": list(spec.bands) if spec.bands else None,
            "groups": groups, "summary": summary, "notes": _notes(groups, config)}


def _notes(groups: list[dict[str, Any]], config: FairnessConfig) -> list[str]:
    """Sentences saying which figures are not meaningful, and why."""
    notes = []
    for g in groups:
        if g["n"] < config.min_group_size:
            notes.append(f"{g['group']}: {g['n']} applicants, fewer than "
                         f"{config.min_group_size}; its rates are shown but not judged.")
            continue
        for metric, denominator, _ in RATES[1:]:
            if not g[metric]["meaningful"]:
                what = "actually good" if denominator == "actual_good" else "actually bad"
                notes.append(f"{g['group']}: only {g[denominator]} {what} applicants; its "
                             f"{metric.upper()} is shown but not judged.")
    return notes


def fairness_report(frame: Any, y_bad: Any, p_bad: Any, threshold: float,
                    config: FairnessConfig, *, trained_without: Sequence[str] = ()
                    ) -> dict[str, Any]:
    """Return the fairness report (fairness.json) of scores on held-out data.

    Args:
        frame: the held-out inputs (a DataFrame holding every group column, including
            columns the model was trained without).
        y_bad: True where the applicant was actually bad.
        p_bad: the model's P(bad) for each row.
        threshold: "bad" when P(bad) >= threshold; approvals are the rest.
        config: groups, minimum group size, confidence level.
        trained_without: input columns the model ignores (``model.exclude``).
    """
    import fairlearn
    import numpy as np

    y = np.asarray(y_bad, dtype=bool)
    p = np.asarray(p_bad, dtype="float64")
    approved = (p < threshold).astype(int)
    y_good = (~y).astype(int)
    n = len(y)
    overall: dict[str, Any] = {"n": n, "approved": int(approved.sum()),
                               "actual_good": int(y_good.sum()),
                               "approved_good": int((approved & y_good).sum()),
                               "approved_bad": int((approved & (1 - y_good)).sum())}
    overall["actual_bad"] = n - overall["actual_good"]
    for metric, denominator, numerator in RATES:
        den = overall[denominator]
        overall[metric] = _rate(overall[numerator], den,
                                overall[numerator] / den if den else None, config)
    return {
        "method": "fairlearn MetricFrame", "fairlearn_version": fairlearn.__version__,
        "data": "held-out", "n": n, "favourable_outcome": FAVOURABLE, "threshold": threshold,
        "interval": "wilson", "confidence_level": config.confidence_level,
        "min_group_size": config.min_group_size,
        "trained_without": list(trained_without),
        "overall": overall,
        "attributes": [_attribute(spec, frame, y_good, approved, y.astype(int), p, config)
                       for spec in config.groups],
    }
