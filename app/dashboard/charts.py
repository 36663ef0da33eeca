"""Small SVG charts of API traffic over time (SVG attributes only: CSP bans inline style)."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from app.services.traffic import SeriesPoint

WIDTH, HEIGHT = 320, 120
LEFT, RIGHT, TOP, BOTTOM = 40, 8, 18, 22
INK, MUTED, GRID = "#1d2330", "#5c6577", "#e2e5ea"


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _nice_max(value: float) -> float:
    """A round upper bound for the y axis (1, 2, 5 × 10^n)."""
    if value <= 0:
        return 1.0
    scale = 1.0
    while scale * 10 <= value:
        scale *= 10
    while scale > value:
        scale /= 10
    for step in (1, 2, 5, 10):
        if step * scale >= value:
            return step * scale
    return 10 * scale


def series_chart(points: Sequence[SeriesPoint], *, metric: str, title: str, unit: str,
                 colour: str = "#2f5bd3") -> Markup:
    """A line (p95 latency) or bar (calls) chart over the points' minutes."""
    values: list[float | None] = [
        float(p.calls) if metric == "calls" else p.p95_ms for p in points]
    known = [v for v in values if v is not None]
    top = _nice_max(max(known) if known else 0.0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = max(1, len(values))
    step = plot_w / n

    def y(value: float) -> float:
        return TOP + plot_h - plot_h * value / top

    body = [f'<text x="{LEFT}" y="12" font-size="11" fill="{INK}">{escape(title)}</text>']
    for frac in (0.0, 0.5, 1.0):
        yy = y(top * frac)
        body.append(f'<line x1="{LEFT}" y1="{_num(yy)}" x2="{WIDTH - RIGHT}" y2="{_num(yy)}" '
                    f'stroke="{GRID}"/>')
        body.append(f'<text x="{LEFT - 4}" y="{_num(yy + 3)}" font-size="9" fill="{MUTED}" '
                    f'text-anchor="end">{_num(top * frac)}</text>')
    if points:
        first, last = points[0].start, points[-1].start
        body.append(f'<text x="{LEFT}" y="{HEIGHT - 6}" font-size="9" fill="{MUTED}">'
                    f'{first:%H:%M}</text>')
        body.append(f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" font-size="9" fill="{MUTED}" '
                    f'text-anchor="end">{last:%H:%M} UTC</text>')
    if metric == "calls":
        for i, value in enumerate(values):
            if not value:
                continue
            x = LEFT + i * step + step * 0.15
            body.append(f'<rect x="{_num(x)}" y="{_num(y(value))}" width="{_num(step * 0.7)}" '
                        f'height="{_num(TOP + plot_h - y(value))}" fill="{colour}">'
                        f'<title>{points[i].start:%H:%M}: {int(value)} {escape(unit)}</title>'
                        f'</rect>')
    else:
        coords = [(LEFT + i * step + step / 2, y(v)) for i, v in enumerate(values)
                  if v is not None]
        if len(coords) > 1:
            body.append('<polyline fill="none" stroke-width="2" stroke="' + colour + '" points="'
                        + " ".join(f"{_num(a)},{_num(b)}" for a, b in coords) + '"/>')
        for (cx, cy), value in zip(coords, [v for v in values if v is not None], strict=True):
            body.append(f'<circle cx="{_num(cx)}" cy="{_num(cy)}" r="2.5" fill="{colour}">'
                        f'<title>{_num(value)} {escape(unit)}</title></circle>')
    if not known:
        body.append(f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" font-size="11" '
                    f'fill="{MUTED}" text-anchor="middle">no calls yet</text>')
    label = f"{title}, per minute over the last {len(points)} minutes"
    return Markup(f'<svg class="chart spark" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
                  f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
                  + "".join(body) + "</svg>")
