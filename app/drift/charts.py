"""SVG charts of the Drift page: one field's PSI over the checks, with the band thresholds
(SVG attributes only: the Content-Security-Policy bans inline styles)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 340, 150
LEFT, RIGHT, TOP, BOTTOM = 40, 10, 12, 24
INK, MUTED, GRID = "#1d2330", "#5c6577", "#e2e5ea"
BAND_COLOURS = {"stable": "#1f8a4c", "watch": "#b7791f", "act": "#c53030"}
LINE = "#2f5bd3"


@dataclass(frozen=True)
class PsiPoint:
    """One check's PSI of a field."""

    checked_at: dt.datetime
    psi: float
    band: str
    model_version: str


def _num(value: float) -> str:
    return f"{value:.1f}"


def psi_chart(field: str, points: Sequence[PsiPoint], *, watch: float, act: float) -> Markup:
    """PSI per check, oldest left; dashed lines at the watch and act thresholds.

    The scale ends at most at four times the act threshold, so the thresholds stay readable;
    a larger PSI is drawn at the top edge as a triangle (its value is in the tooltip).
    """
    top = max([act * 1.6, *(min(p.psi * 1.1, act * 4) for p in points)])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def y(value: float) -> float:
        return TOP + plot_h - plot_h * min(value, top) / top

    n = max(1, len(points))
    step = plot_w / n
    body = [f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
            f'stroke="{GRID}"/>']
    for value, name in ((watch, "watch"), (act, "act")):
        yy = _num(y(value))
        body.append(f'<line x1="{LEFT}" y1="{yy}" x2="{WIDTH - RIGHT}" y2="{yy}" '
                    f'stroke="{BAND_COLOURS[name]}" stroke-dasharray="4 3"/>')
        body.append(f'<text x="{LEFT - 4}" y="{_num(y(value) + 3)}" font-size="9" '
                    f'fill="{MUTED}" text-anchor="end">{value:g}</text>')
    body.append(f'<text x="{LEFT - 4}" y="{TOP + plot_h + 3}" font-size="9" fill="{MUTED}" '
                f'text-anchor="end">0</text>')
    coords = [(LEFT + i * step + step / 2, y(p.psi)) for i, p in enumerate(points)]
    if len(coords) > 1:
        body.append(f'<polyline fill="none" stroke-width="2" stroke="{LINE}" points="'
                    + " ".join(f"{_num(a)},{_num(b)}" for a, b in coords) + '"/>')
    body.append(f'<text x="{LEFT - 4}" y="{TOP + 8}" font-size="9" fill="{MUTED}" '
                f'text-anchor="end">{top:.2g}</text>')
    for (cx, cy), point in zip(coords, points, strict=True):
        tip = escape(f"{point.checked_at:%Y-%m-%d %H:%M} UTC, v{point.model_version}: "
                     f"PSI {point.psi:.3f} ({point.band})")
        colour = BAND_COLOURS.get(point.band, INK)
        band = escape(point.band)
        if point.psi > top:  # off the scale: a triangle pointing up at the top edge
            body.append(f'<polygon points="{_num(cx - 5)},{_num(cy + 6)} {_num(cx + 5)},'
                        f'{_num(cy + 6)} {_num(cx)},{_num(cy - 2)}" fill="{colour}" '
                        f'data-band="{band}"><title>{tip}</title></polygon>')
        else:
            body.append(f'<circle cx="{_num(cx)}" cy="{_num(cy)}" r="3.5" fill="{colour}" '
                        f'data-band="{band}"><title>{tip}</title></circle>')
    if points:
        body.append(f'<text x="{LEFT}" y="{HEIGHT - 6}" font-size="9" fill="{MUTED}">'
                    f'{points[0].checked_at:%m-%d %H:%M}</text>')
        body.append(f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" font-size="9" fill="{MUTED}" '
                    f'text-anchor="end">{points[-1].checked_at:%m-%d %H:%M} UTC</text>')
    else:
        body.append(f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" font-size="11" '
                    f'fill="{MUTED}" text-anchor="middle">no checks yet</text>')
    label = f"Population stability index of {field} over the last {len(points)} checks"
    return Markup(f'<svg class="chart drift-chart" data-chart="psi" data-field="{escape(field)}" '
                  f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}" '
                  f'xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>")
