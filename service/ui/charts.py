"""Charts drawn on the server as SVG: no chart library, no script, nothing fetched.

Each function returns markup safe to put in a page (every label is escaped). Colours come with
text: every point and line is also named in a legend or a title.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 420, 240
MARGIN = {"left": 48, "right": 12, "top": 24, "bottom": 36}
LEGEND_ROW = 14
# Colour-blind-safe (Okabe–Ito), in the order series are drawn.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]
    dashed: bool = False


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str
    highlighted: bool


def _bounds(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 if high > low else max(abs(low) * 0.1, 0.01)
    return low - pad, high + pad


def compact(value: float) -> str:
    """A tick's number, short: 43.7k, 1.2M, 0.649."""
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def _scale(value: float, low: float, high: float, start: float, end: float) -> float:
    return start + (value - low) / (high - low) * (end - start)


def _frame(title: str, x_label: str, y_label: str, x_range, y_range, ticks_x) -> list[str]:
    left, right = MARGIN["left"], WIDTH - MARGIN["right"]
    top, bottom = MARGIN["top"], HEIGHT - MARGIN["bottom"]
    parts = [
        f'<text x="{left}" y="16" class="chart-title">{escape(title)}</text>',
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" class="axis"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" class="axis"/>',
        f'<text x="{(left + right) / 2}" y="{HEIGHT - 4}" class="axis-label">'
        f"{escape(x_label)}</text>",
        f'<text x="12" y="{(top + bottom) / 2}" class="axis-label" '
        f'transform="rotate(-90 12 {(top + bottom) / 2})">{escape(y_label)}</text>',
    ]
    for value, text in ticks_x:
        x = _scale(value, *x_range, left, right)
        parts.append(f'<text x="{x:.1f}" y="{bottom + 14}" class="tick x">{escape(text)}</text>')
    for fraction in (0, 0.5, 1):
        value = y_range[0] + fraction * (y_range[1] - y_range[0])
        y = _scale(value, *y_range, bottom, top)
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" class="tick y">{value:.3g}</text>')
    return parts


def line_chart(title: str, x_label: str, y_label: str, series: Sequence[Series]) -> Markup:
    """Lines over a shared x axis (epochs), with a legend; empty series are left out."""
    drawn = [line for line in series if line.points]
    if not drawn:
        return Markup(f'<p class="empty">{escape(title)}: no data yet</p>')
    xs = [x for line in drawn for x, _ in line.points]
    ys = [y for line in drawn for _, y in line.points]
    x_range, y_range = (min(xs) - 0.3, max(xs) + 0.3), _bounds(ys)
    whole = sorted({int(x) for x in xs})
    step = max(1, math.ceil(len(whole) / 10))
    ticks = [(x, str(x)) for x in whole[::step]]
    parts = _frame(title, x_label, y_label, x_range, y_range, ticks)
    left, right = MARGIN["left"], WIDTH - MARGIN["right"]
    top, bottom = MARGIN["top"], HEIGHT - MARGIN["bottom"]
    for index, line in enumerate(drawn):
        colour = COLOURS[index % len(COLOURS)]
        coordinates = " ".join(
            f"{_scale(x, *x_range, left, right):.1f},{_scale(y, *y_range, bottom, top):.1f}"
            for x, y in line.points
        )
        dash = ' stroke-dasharray="5 3"' if line.dashed else ""
        parts.append(
            f'<polyline points="{coordinates}" stroke="{colour}" class="series"{dash} '
            f'data-points="{len(line.points)}"><title>{escape(line.name)}</title></polyline>'
        )
        # Markers too: one epoch is a point, which a line alone would not show.
        for pair in coordinates.split():
            x, y = pair.split(",")
            parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{colour}"/>')
        # The legend sits below the plot, a row a series, where no line can cross it.
        legend_y = HEIGHT + 6 + index * LEGEND_ROW
        parts.append(
            f'<line x1="{left}" y1="{legend_y}" x2="{left + 16}" y2="{legend_y}" '
            f'stroke="{colour}" class="series"{dash}/>'
            f'<text x="{left + 22}" y="{legend_y + 4}" class="legend">{escape(line.name)}</text>'
        )
    return _svg(title, parts, HEIGHT + 8 + len(drawn) * LEGEND_ROW)


def scatter_chart(
    title: str, x_label: str, y_label: str, points: Sequence[Point], *, log_x: bool = False
) -> Markup:
    """Labelled points; highlighted ones (a Pareto front) are filled and joined by a line."""
    if not points:
        return Markup(f'<p class="empty">{escape(title)}: no finished runs yet</p>')

    def to_x(value: float) -> float:
        return math.log10(value) if log_x and value > 0 else value

    x_range = _bounds([to_x(point.x) for point in points])
    y_range = _bounds([point.y for point in points])
    ticks = [(to_x(point.x), compact(point.x)) for point in points[:: max(1, len(points) // 5)]]
    parts = _frame(title, x_label, y_label, x_range, y_range, ticks)
    left, right = MARGIN["left"], WIDTH - MARGIN["right"]
    top, bottom = MARGIN["top"], HEIGHT - MARGIN["bottom"]
    placed = [
        (_scale(to_x(p.x), *x_range, left, right), _scale(p.y, *y_range, bottom, top), p)
        for p in points
    ]
    front = sorted((x, y) for x, y, point in placed if point.highlighted)
    if len(front) > 1:
        coordinates = " ".join(f"{x:.1f},{y:.1f}" for x, y in front)
        parts.append(f'<polyline points="{coordinates}" class="front"/>')
    for x, y, point in placed:
        kind = "point front-point" if point.highlighted else "point"
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" class="{kind}">'
            f"<title>{escape(point.label)}: {point.y:.4f}, {point.x:,.4g}</title></circle>"
        )
    return _svg(title, parts)


def _svg(title: str, parts: list[str], height: int = HEIGHT) -> Markup:
    return Markup(
        f'<svg viewBox="0 0 {WIDTH} {height}" class="chart" role="img" '
        f'aria-label="{escape(title)}">{"".join(parts)}</svg>'
    )


def heat(value: int, row_total: int) -> str:
    """A cell's background: the share of its row, as the opacity of one blue, at most 0.6 so
    that dark text on it keeps a contrast above 4.5:1; the number is always written too."""
    share = value / row_total if row_total else 0.0
    return f"rgba(0, 114, 178, {0.6 * share:.2f})"
