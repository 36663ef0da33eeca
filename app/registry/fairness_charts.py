"""SVG charts of a fairness report (fairness.json): rates by group and calibration by group.

Like app/registry/charts.py: server-side, escaped, colours as SVG attributes. A figure the
report marks not meaningful (too few applicants) is drawn hollow and grey.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markupsafe import Markup, escape

from app.ml.fairness import RATE_LABELS
from app.registry.charts import (
    GRID,
    INK,
    MUTED,
    SERIES_COLOURS,
    _diagonal,
    _num,
    _svg,
    _text,
    _unit_axes,
    _x,
    _y,
)

FOUR_FIFTHS = 0.8
_PANEL, _LABEL_WIDTH, _ROW, _TOP = 150, 96, 26, 34
_GROUP_COLOURS = (*SERIES_COLOURS, "#8a3ab9", "#b83280", "#2c7a7b")


def _point(cx: float, cy: float, rate: Mapping[str, Any], colour: str, tip: str) -> str:
    meaningful = bool(rate.get("meaningful"))
    fill = colour if meaningful else "#fff"
    stroke = colour if meaningful else MUTED
    cls = "fairness-point" + ("" if meaningful else " not-meaningful")
    return (f'<circle class="{cls}" cx="{_num(cx)}" cy="{_num(cy)}" r="4.5" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="1.5"><title>{escape(tip)}</title></circle>')


def _tip(group: str, metric: str, rate: Mapping[str, Any]) -> str:
    value, low, high = rate.get("value"), rate.get("low"), rate.get("high")
    if value is None:
        return f"{group}: {RATE_LABELS[metric]}: no applicants to measure"
    text = (f"{group}: {RATE_LABELS[metric]} {value:.2f} "
            f"({rate.get('successes')} of {rate.get('n')}; interval {low:.2f}–{high:.2f})")
    return text if rate.get("meaningful") else text + ", too few applicants: not judged"


def group_rates(attribute: Mapping[str, Any]) -> Markup:
    """Selection rate, TPR and FPR of each group with Wilson intervals, side by side.

    The selection-rate panel carries the four-fifths line: 0.8 times the highest meaningful
    group's rate; a meaningful group left of it fails the four-fifths rule.
    """
    groups = list(attribute.get("groups") or [])
    metrics = ("selection_rate", "tpr", "fpr")
    width = _LABEL_WIDTH + _PANEL * len(metrics) + 10
    height = _TOP + _ROW * max(len(groups), 1) + 30
    body: list[str] = []
    for m, metric in enumerate(metrics):
        # Panels apart by a gap, so one panel's "1" does not touch the next one's "0".
        x0 = _LABEL_WIDTH + m * _PANEL + 10
        x1 = x0 + _PANEL - 30

        def sx(value: float, x0: float = x0, x1: float = x1) -> float:
            return x0 + value * (x1 - x0)

        body.append(_text((x0 + x1) / 2, 14, RATE_LABELS[metric].split(" (")[0], fill=INK,
                          size=11))
        for tick in (0.0, 0.5, 1.0):
            body.append(f'<line x1="{_num(sx(tick))}" y1="{_TOP - 10}" x2="{_num(sx(tick))}" '
                        f'y2="{height - 24}" stroke="{GRID}"/>')
            body.append(_text(sx(tick), height - 10, f"{tick:g}", size=10))
        if metric == "selection_rate":
            judged = [g[metric]["value"] for g in groups
                      if g[metric].get("meaningful") and g[metric].get("value") is not None]
            if len(judged) >= 2:
                line = sx(FOUR_FIFTHS * max(judged))
                body.append(f'<line class="four-fifths" x1="{_num(line)}" y1="{_TOP - 10}" '
                            f'x2="{_num(line)}" y2="{height - 24}" stroke="#c53030" '
                            f'stroke-dasharray="4 3"><title>four-fifths of the highest '
                            f'selection rate: {FOUR_FIFTHS * max(judged):.2f}</title></line>')
        for i, group in enumerate(groups):
            y = _TOP + i * _ROW + _ROW / 2
            rate = group.get(metric) or {}
            colour = _GROUP_COLOURS[i % len(_GROUP_COLOURS)]
            if rate.get("value") is None:
                continue
            if rate.get("low") is not None:
                body.append(f'<line x1="{_num(sx(rate["low"]))}" y1="{_num(y)}" '
                            f'x2="{_num(sx(rate["high"]))}" y2="{_num(y)}" stroke="{MUTED}"/>')
            body.append(_point(sx(rate["value"]), y, rate, colour,
                               _tip(str(group.get("group")), metric, rate)))
    for i, group in enumerate(groups):
        y = _TOP + i * _ROW + _ROW / 2
        body.append(_text(_LABEL_WIDTH - 4, y + 4, f"{group.get('group')} ({group.get('n')})",
                          anchor="end", fill=INK))
    return _svg("fairness-rates", f"Rates by {attribute.get('name')}", body, width=width,
                height=height)


def group_calibration(attribute: Mapping[str, Any]) -> Markup:
    """Observed bad rate against mean predicted P(bad) per group: a line over each group's
    bins, and the group's overall dot with its Wilson interval."""
    groups = list(attribute.get("groups") or [])
    body = _unit_axes("Mean predicted P(bad)", "Observed bad rate")
    body.append(_diagonal())
    for i, group in enumerate(groups):
        colour = _GROUP_COLOURS[i % len(_GROUP_COLOURS)]
        calibration = group.get("calibration") or {}
        bins = list(calibration.get("bins") or [])
        if len(bins) > 1:
            line = " ".join(f"{_num(_x(b['mean_predicted']))},{_num(_y(b['observed_rate']))}"
                            for b in bins)
            body.append(f'<polyline class="group-bins" points="{line}" fill="none" '
                        f'stroke="{colour}" stroke-width="1.2" stroke-opacity="0.6"/>')
        observed = calibration.get("observed_bad") or {}
        predicted = calibration.get("mean_predicted_bad")
        if predicted is None or observed.get("value") is None:
            continue
        cx = _x(predicted)
        if observed.get("low") is not None:
            body.append(f'<line x1="{_num(cx)}" y1="{_num(_y(observed["low"]))}" '
                        f'x2="{_num(cx)}" y2="{_num(_y(observed["high"]))}" stroke="{colour}"/>')
        tip = (f"{group.get('group')}: predicted {predicted:.2f}, observed "
               f"{observed['value']:.2f} ({observed.get('successes')} of {observed.get('n')})")
        body.append(_point(cx, _y(observed["value"]), observed, colour, tip))
        body.append(f'<rect x="{_num(_x(0.04))}" y="{_num(_y(0.95) + i * 15 - 8)}" width="10" '
                    f'height="10" fill="{colour}"/>')
        body.append(_text(_x(0.04) + 14, _y(0.95) + i * 15 + 1, str(group.get("group")),
                          anchor="start", fill=INK, size=10))
    return _svg("fairness-calibration", f"Calibration by {attribute.get('name')}", body)
