"""Fairness reports of registered versions and the promotion gate they are judged by.

A version's report (fairness.json in its model package, written by the train job) never
changes, so it is cached per app; the gate is evaluated against the pipeline file's current
``gate`` thresholds whenever it is shown, and frozen into a promotion request's evidence when
one is made (the approver decides on what was shown).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import current_app

if TYPE_CHECKING:
    from app.ml.registry import ModelVersionInfo
    from app.pipeline_config import GateSettings

logger = logging.getLogger(__name__)

_EXTENSION = "modelgate.fairness"
_CACHE_SIZE = 256
FOUR_FIFTHS = 0.8


@dataclass(frozen=True)
class GateCheck:
    """One threshold against one figure; ``passed`` None: not judged (groups too small)."""

    name: str
    threshold: float
    value: float | None
    passed: bool | None
    detail: str
    attribute: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {"name": self.name, "attribute": self.attribute, "threshold": self.threshold,
                "value": self.value, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True)
class GateResult:
    """Every configured check of one version; it passes when none failed."""

    checks: tuple[GateCheck, ...]
    configured: bool

    @property
    def passed(self) -> bool:
        """True unless a check failed (a check not judged does not fail the gate)."""
        return all(check.passed is not False for check in self.checks)

    @property
    def failures(self) -> list[str]:
        """The failed checks, as sentences."""
        return [check.detail for check in self.checks if check.passed is False]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (``GET /models/<name>/versions``, promotion evidence)."""
        return {"configured": self.configured, "passed": self.passed,
                "failures": self.failures, "checks": [c.to_dict() for c in self.checks]}


def evaluate_gate(settings: GateSettings, heldout_auc: float | None,
                  report: Mapping[str, Any] | None) -> GateResult:
    """Judge a version's held-out ROC AUC and fairness report against the thresholds.

    A missing figure fails its check (a version without a fairness report cannot show that it
    meets a fairness threshold); a figure the report marks not meaningful is not judged.
    """
    checks: list[GateCheck] = []
    if settings.min_heldout_auc is not None:
        limit = settings.min_heldout_auc
        if heldout_auc is None:
            checks.append(GateCheck("min_heldout_auc", limit, None, False,
                                    "held-out ROC AUC: not recorded for this version"))
        else:
            ok = heldout_auc >= limit
            checks.append(GateCheck("min_heldout_auc", limit, heldout_auc, ok,
                                    f"held-out ROC AUC {heldout_auc:.3f} "
                                    f"{'≥' if ok else '<'} {limit:g}"))
    fairness: list[tuple[str, float | None]] = [
        ("min_selection_rate_ratio", settings.min_selection_rate_ratio),
        ("max_equalized_odds_gap", settings.max_equalized_odds_gap)]
    for name, threshold in fairness:
        if threshold is None:
            continue
        limit = threshold
        attributes = list((report or {}).get("attributes") or [])
        if not attributes:
            checks.append(GateCheck(name, limit, None, False,
                                    f"{_LABELS[name]}: the version has no fairness report "
                                    "(trained before reports existed); retrain it"))
            continue
        for attribute in attributes:
            checks.append(_fairness_check(name, limit, attribute, report or {}))
    return GateResult(tuple(checks), settings.configured)


_LABELS = {"min_selection_rate_ratio": "selection-rate ratio",
           "max_equalized_odds_gap": "equalised-odds gap"}


def _fairness_check(name: str, limit: float, attribute: Mapping[str, Any],
                    report: Mapping[str, Any]) -> GateCheck:
    summary = attribute.get("summary") or {}
    label = f"{_LABELS[name]} by {attribute.get('name')}"
    if name == "min_selection_rate_ratio":
        figure = summary.get("selection_rate") or {}
        value, meaningful = figure.get("ratio"), figure.get("meaningful")
    else:
        figure = summary.get("equalized_odds_gap") or {}
        value, meaningful = figure.get("value"), figure.get("meaningful")
    if not meaningful or value is None:
        why = (f"fewer than two groups with at least {report.get('min_group_size')} "
               "applicants" if not meaningful else "no group was approved")
        return GateCheck(name, limit, None, None, f"{label}: not judged ({why})",
                         attribute.get("name"))
    ok = value >= limit if name == "min_selection_rate_ratio" else value <= limit
    sign = ("≥" if ok else "<") if name == "min_selection_rate_ratio" else ("≤" if ok else ">")
    return GateCheck(name, limit, float(value), ok, f"{label} {value:.3f} {sign} {limit:g}",
                     attribute.get("name"))


# --------------------------------------------------------------------------- reading


class _Cache:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reports: OrderedDict[tuple[str, str, str], dict[str, Any] | None] = OrderedDict()


def _cache() -> _Cache:
    return current_app.extensions.setdefault(_EXTENSION, _Cache())  # type: ignore[no-any-return]


def report(info: ModelVersionInfo) -> dict[str, Any] | None:
    """The version's fairness report, or None when it has none (trained before reports).

    Read from the instance's package cache when the package is there, else only the file
    from the registry (the rest of the package is not downloaded).
    """
    from app.errors import ServiceUnavailable
    from app.ml.package import FAIRNESS_FILE, PACKAGE_FILES
    from app.ml.registry import RegistryError
    from app.services import models

    key = (models.registry().tracking_uri, info.name, info.version)
    cache = _cache()
    with cache.lock:
        if key in cache.reports:
            cache.reports.move_to_end(key)
            return cache.reports[key]
    package = models.package_dir(info.name, info.version)
    found: dict[str, Any] | None
    try:
        if (package / FAIRNESS_FILE).is_file():
            found = json.loads((package / FAIRNESS_FILE).read_text(encoding="utf-8"))
        elif all((package / f).is_file() for f in PACKAGE_FILES):
            found = None  # a whole package without the file: trained before reports
        else:
            found = models.registry().package_json(info.name, info.version, FAIRNESS_FILE)
    except (RegistryError, OSError, ValueError) as exc:
        logger.warning("fairness report of %s v%s unavailable: %s", info.name, info.version,
                       exc)
        raise ServiceUnavailable(f"the fairness report of {info.name} v{info.version} cannot "
                                 "be read right now") from None
    with cache.lock:
        cache.reports[key] = found
        while len(cache.reports) > _CACHE_SIZE:
            cache.reports.popitem(last=False)
    return found


def gate(info: ModelVersionInfo, found: Mapping[str, Any] | None = None) -> GateResult:
    """The version judged against the pipeline file's current gate thresholds."""
    from app.services import models

    auc = info.metrics.get("roc_auc")
    return evaluate_gate(models.pipeline().gate, float(auc) if auc is not None else None,
                         found if found is not None else report(info))


def for_api(info: ModelVersionInfo) -> dict[str, Any]:
    """``fairness`` of a version in ``GET /api/v1/models/<name>/versions``: the report (None
    for a version trained before reports) and the gate's result under the current thresholds;
    when the report cannot be read, both are None and ``error`` says so."""
    from app.errors import ServiceUnavailable

    try:
        found = report(info)
    except ServiceUnavailable as exc:
        return {"report": None, "gate": None, "error": exc.message}
    return {"report": found, "gate": gate(info, found).to_dict()}


def for_evidence(info: ModelVersionInfo) -> dict[str, Any]:
    """What a promotion request freezes of a version: its report without the calibration
    bins (the approval page shows rates, gaps and ratios) and the gate result."""
    found = report(info)
    return {"report": compact(found), "gate": gate(info, found).to_dict()}


def compact(found: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A report without its per-group calibration bins (and its comparison's)."""
    if found is None:
        return None

    def strip(attributes: Any) -> list[dict[str, Any]]:
        return [{**a, "groups": [{**g, "calibration": {k: v for k, v in
                                                        (g.get("calibration") or {}).items()
                                                        if k != "bins"}}
                                 for g in a.get("groups") or []]}
                for a in attributes or []]

    out = {**found, "attributes": strip(found.get("attributes"))}
    if found.get("comparison"):
        out["comparison"] = {**found["comparison"],
                             "attributes": strip(found["comparison"].get("attributes"))}
    return out
