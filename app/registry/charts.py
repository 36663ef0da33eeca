"""Server-side SVG charts for the registry pages (no JavaScript, no inline styles).

Each function takes a model package's JSON (roc.json, importance.json, calibration.json, the
confusion matrix of metrics.json) and returns escaped SVG markup. Colours are SVG attributes,
which the panel's Content-Security-Policy allows; sizes scale through the viewBox.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

WIDTH, HEIGHT = 360, 300
LEFT, RIGHT, TOP, BOTTOM = 50, 14, 14, 42
SERIES_COLOURS = ("#2f5bd3", "#c05621", "#1f8a4c")
INK, MUTED, GRID = "#1d2330", "#5c6577", "#e2e5ea"
_ids = itertools.count(1)


@dataclass(frozen=True)
class RocSeries:
    """One ROC curve, its AUC and its operating point at the chosen threshold."""

    label: str
    roc: Mapping[str, Any]
    point: tuple[float, float] | None = None


def _num(value: float) -> str:
    return f"{value:.1f}"


def _x(value: float, lo: float = 0.0, hi: float = 1.0) -> float:
    span = (hi - lo) or 1.0
    return LEFT + (value - lo) / span * (WIDTH - LEFT - RIGHT)


def _y(value: float, lo: float = 0.0, hi: float = 1.0) -> float:
    span = (hi - lo) or 1.0
    return HEIGHT - BOTTOM - (value - lo) / span * (HEIGHT - TOP - BOTTOM)


def _svg(kind: str, title: str, body: list[str], *, width: int = WIDTH,
         height: int = HEIGHT) -> Markup:
    ident = f"chart-{kind}-{next(_ids)}"
    head = (f'<svg class="chart chart-{kind}" data-chart="{kind}" viewBox="0 0 {width} '
            f'{height}" role="img" aria-labelledby="{ident}" xmlns="http://www.w3.org/2000/svg">'
            f'<title id="{ident}">{escape(title)}</title>')
    return Markup(head + "".join(body) + "</svg>")  # every piece of text was escaped


def _text(x: float, y: float, text: object, *, anchor: str = "middle", size: int = 11,
          fill: str = MUTED, extra: str = "") -> str:
    return (f'<text x="{_num(x)}" y="{_num(y)}" text-anchor="{anchor}" font-size="{size}" '
            f'fill="{fill}"{extra}>{escape(str(text))}</text>')


def _unit_axes(x_label: str, y_label: str) -> list[str]:
    """Axes, grid and ticks for a [0, 1] x [0, 1] plot."""
    out = []
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x, y = _x(tick), _y(tick)
        out.append(f'<line x1="{_num(x)}" y1="{TOP}" x2="{_num(x)}" y2="{HEIGHT - BOTTOM}" '
                   f'stroke="{GRID}"/>')
        out.append(f'<line x1="{LEFT}" y1="{_num(y)}" x2="{WIDTH - RIGHT}" y2="{_num(y)}" '
                   f'stroke="{GRID}"/>')
        out.append(_text(x, HEIGHT - BOTTOM + 14, f"{tick:g}", size=10))
        out.append(_text(LEFT - 6, y + 3, f"{tick:g}", anchor="end", size=10))
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
               f'height="{HEIGHT - TOP - BOTTOM}" fill="none" stroke="{MUTED}"/>')
    out.append(_text((LEFT + WIDTH - RIGHT) / 2, HEIGHT - 8, x_label))
    out.append(_text(14, (TOP + HEIGHT - BOTTOM) / 2, y_label,
                     extra=f' transform="rotate(-90 14 {_num((TOP + HEIGHT - BOTTOM) / 2)})"'))
    return out


def _diagonal() -> str:
    return (f'<line x1="{_num(_x(0))}" y1="{_num(_y(0))}" x2="{_num(_x(1))}" y2="{_num(_y(1))}" '
            f'stroke="{MUTED}" stroke-dasharray="4 4"/>')


def roc_curve(series: Sequence[RocSeries], title: str = "ROC curve") -> Markup:
    """Draw one or more ROC curves (P(bad) as the score) with their operating points."""
    body = _unit_axes("False positive rate (good called bad)", "True positive rate (bad caught)")
    body.append(_diagonal())
    for i, item in enumerate(series):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        fpr, tpr = item.roc.get("fpr") or [], item.roc.get("tpr") or []
        points = " ".join(f"{_num(_x(a))},{_num(_y(b))}" for a, b in zip(fpr, tpr, strict=False))
        body.append(f'<polyline class="roc-line" points="{points}" fill="none" '
                    f'stroke="{colour}" stroke-width="2"/>')
        if item.point is not None:
            px, py = _x(item.point[0]), _y(item.point[1])
            body.append(f'<circle class="operating-point" cx="{_num(px)}" cy="{_num(py)}" r="4.5" '
                        f'fill="{colour}" stroke="#fff" stroke-width="1.5">'
                        f'<title>{escape(item.label)}: chosen threshold</title></circle>')
        auc = item.roc.get("auc")
        legend = f"{item.label}: AUC {auc:.3f}" if isinstance(auc, int | float) else item.label
        body.append(f'<rect x="{_num(_x(0.45))}" y="{_num(_y(0.18) + i * 16 - 8)}" width="10" '
                    f'height="10" fill="{colour}"/>')
        body.append(_text(_x(0.45) + 14, _y(0.18) + i * 16 + 1, legend, anchor="start",
                          fill=INK))
    return _svg("roc", title, body)


def roc_series(label: str, data: Any) -> RocSeries:
    """Build a RocSeries from a version's chart data (roc.json and metrics.json)."""
    confusion = (data.metrics.get("heldout") or {}).get("confusion_matrix") or {}
    return RocSeries(label, data.roc, operating_point(confusion))


def operating_point(confusion: Mapping[str, Any]) -> tuple[float, float] | None:
    """Return (false positive rate, true positive rate) of a confusion matrix, if complete."""
    try:
        (tp, fn), (fp, tn) = confusion["matrix"]
    except (KeyError, TypeError, ValueError):
        return None
    if tp + fn == 0 or fp + tn == 0:
        return None
    return fp / (fp + tn), tp / (tp + fn)


def confusion_matrix(confusion: Mapping[str, Any], threshold: float | None = None,
                     cost: Mapping[str, Any] | None = None,
                     title: str = "Confusion matrix") -> Markup:
    """Draw the held-out confusion matrix (rows actual, columns predicted) at the threshold."""
    labels = list(confusion.get("labels") or ["bad", "good"])
    matrix = confusion.get("matrix") or [[0, 0], [0, 0]]
    total = sum(sum(row) for row in matrix) or 1
    width, height, cell, x0, y0 = 300, 250, 90, 100, 50
    body = [_text(x0 + cell, 18, "Predicted", fill=INK, size=12),
            _text(22, y0 + cell, "Actual", fill=INK, size=12,
                  extra=f' transform="rotate(-90 22 {y0 + cell})"')]
    for j, label in enumerate(labels):
        body.append(_text(x0 + cell * j + cell / 2, y0 - 8, label))
        body.append(_text(x0 - 8, y0 + cell * j + cell / 2 + 4, label, anchor="end"))
    weights = {"bad-good": (cost or {}).get("bad_as_good"),
               "good-bad": (cost or {}).get("good_as_bad")}
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            correct = i == j
            share = count / total
            # Darker cells hold more applicants; green where right, red where wrong.
            fill = "#1f8a4c" if correct else "#c53030"
            opacity = 0.12 + 0.7 * share
            x, y = x0 + cell * j, y0 + cell * i
            body.append(f'<rect class="cm-cell" x="{x}" y="{y}" width="{cell}" height="{cell}" '
                        f'fill="{fill}" fill-opacity="{opacity:.2f}" stroke="#fff" '
                        f'stroke-width="2"><title>actual {escape(labels[i])}, predicted '
                        f'{escape(labels[j])}: {count}</title></rect>')
            body.append(_text(x + cell / 2, y + cell / 2 + 2, count, size=20, fill=INK))
            body.append(_text(x + cell / 2, y + cell / 2 + 20, f"{share:.0%}", size=10))
            weight = weights.get(f"{labels[i]}-{labels[j]}")
            if weight is not None and not correct:
                body.append(_text(x + cell / 2, y + 16, f"cost {weight:g} each", size=9))
    if threshold is not None:
        body.append(_text(width / 2, height - 8, f"bad when P(bad) ≥ {threshold:.3f}"))
    return _svg("confusion", title, body, width=width, height=height)


def feature_importance(importance: Mapping[str, Any],
                       title: str = "Permutation importance (drop in ROC AUC)") -> Markup:
    """Draw horizontal bars of permutation importance with ±1 std whiskers."""
    features = list(importance.get("features") or [])
    row, x0, x1, top = 22, 130, WIDTH - 20, 12
    height = top + row * max(len(features), 1) + 34
    values = [f.get("importance_mean", 0.0) + f.get("importance_std", 0.0) for f in features]
    lows = [f.get("importance_mean", 0.0) - f.get("importance_std", 0.0) for f in features]
    hi = max([*values, 0.01])
    lo = min([*lows, 0.0])

    def sx(v: float) -> float:
        return x0 + (v - lo) / (hi - lo) * (x1 - x0)

    zero = sx(0.0)
    body = [f'<line x1="{_num(zero)}" y1="{top - 4}" x2="{_num(zero)}" '
            f'y2="{height - 30}" stroke="{MUTED}"/>']
    for i, feat in enumerate(features):
        mean, std = float(feat.get("importance_mean", 0.0)), float(feat.get("importance_std", 0))
        y = top + i * row
        left, right = sorted((zero, sx(mean)))
        body.append(_text(x0 - 8, y + 14, feat.get("feature", "?"), anchor="end", fill=INK))
        body.append(f'<rect class="importance-bar" x="{_num(left)}" y="{y + 4}" '
                    f'width="{_num(max(right - left, 0.5))}" height="{row - 8}" '
                    f'fill="{SERIES_COLOURS[0]}"><title>{escape(feat.get("feature", "?"))}: '
                    f'{mean:.4f} ± {std:.4f}</title></rect>')
        body.append(f'<line x1="{_num(sx(mean - std))}" y1="{y + row / 2}" '
                    f'x2="{_num(sx(mean + std))}" y2="{y + row / 2}" stroke="{INK}"/>')
    # The lower tick is drawn only when it is far enough from zero not to overlap it.
    ticks = [0.0, hi] + ([lo] if (0.0 - lo) / (hi - lo) > 0.15 else [])
    for tick in ticks:
        body.append(_text(sx(tick), height - 16, f"{tick:.3f}", size=10))
    return _svg("importance", title, body, height=height)


def calibration(calibration_data: Mapping[str, Any],
                title: str = "Calibration (reliability diagram)") -> Markup:
    """Draw observed bad rate against mean predicted P(bad) per bin, dot area by count."""
    bins = list(calibration_data.get("bins") or [])
    body = _unit_axes("Mean predicted P(bad)", "Observed bad rate")
    body.append(_diagonal())
    most = max([b.get("count", 0) for b in bins] + [1])
    points = [(float(b["mean_predicted"]), float(b["observed_rate"]), int(b.get("count", 0)))
              for b in bins if "mean_predicted" in b and "observed_rate" in b]
    if points:
        line = " ".join(f"{_num(_x(p))},{_num(_y(o))}" for p, o, _ in points)
        body.append(f'<polyline points="{line}" fill="none" stroke="{SERIES_COLOURS[1]}" '
                    f'stroke-width="1.5"/>')
    for p, o, n in points:
        radius = 2.5 + 5.5 * (n / most) ** 0.5
        body.append(f'<circle class="calibration-bin" cx="{_num(_x(p))}" cy="{_num(_y(o))}" '
                    f'r="{radius:.1f}" fill="{SERIES_COLOURS[1]}" fill-opacity="0.8">'
                    f'<title>predicted {p:.2f}, observed {o:.2f}, {n} applicants</title>'
                    f'</circle>')
    brier = calibration_data.get("brier")
    if isinstance(brier, int | float):
        body.append(_text(_x(0.03), _y(0.92), f"Brier {brier:.3f}", anchor="start", fill=INK))
    return _svg("calibration", title, body)
