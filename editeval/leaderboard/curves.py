"""The lifelong curve of a sequential run, drawn on the site as inline SVG (no script).

A record of `editeval edit --mode sequential --curve-every K` carries `meta.curve`: after every K
edits, the mean of every metric column over the edits made so far (`evaluated` of them: all, or an
evenly spaced sample). The entry page plots reliability, generalization and locality against the
edits made (teacher-forced solid, WILD dashed where present); a sequential table where two entries
or more have a curve plots their reliability on one figure, so that a collapse shows at a glance.
The last point of every line is the final record itself (every edit, evaluated after the last one).
The plot geometry is computed here, like `site._scatter`; the template only draws it.
"""

from __future__ import annotations

from dataclasses import dataclass

from editeval.evaluation.specs import TEACHER_FORCED, WILD, MetricName

# (family, label, colour); WILD lines take their family's colour, dashed
FAMILIES = [
    ("reliability", "Reliability", "#1f77b4"),
    ("generalization", "Generalization", "#2ca02c"),
    ("locality", "Locality", "#d62728"),
]
RELIABILITY = str(MetricName("reliability", TEACHER_FORCED))
WIDTH, HEIGHT, PAD, MARGIN = 560, 300, 48, 16  # PAD: left and bottom (tick labels, axis titles)


@dataclass(frozen=True)
class Point:
    edits: int  # edits made when it was taken
    evaluated: int  # of them, evaluated
    values: dict[str, float | None]  # metric column -> mean (0..1), None where missing


def _count(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _fraction(v) -> float | None:
    """A mean as a fraction, else None: `meta.curve` is not checked against the rows, so a value
    that is not a number in 0..1 is left out rather than drawn off the plot."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1:
        return float(v)
    return None


def curve_points(record) -> list[Point]:
    """The record's `meta.curve` points, by edits made (those outside 1..n_edits left out)."""
    total = record.num_edits
    raw = record.meta.get("curve") or []
    if not _count(total):
        return []
    points: dict[int, Point] = {}
    for p in raw:
        edits = _count(p.get("edits"))
        if edits is None or not 0 < edits <= total:
            continue
        metrics = p.get("metrics") if isinstance(p.get("metrics"), dict) else {}
        evaluated = _count(p.get("evaluated")) or edits
        points[edits] = Point(edits, evaluated, {c: _fraction(v) for c, v in metrics.items()})
    return [points[k] for k in sorted(points)]


def series(record) -> list[Point]:
    """The points a plot draws: the curve, then the final record as the last point. A curve point
    taken after the last edit is the same model; the record (every edit evaluated) replaces it."""
    curve = curve_points(record)
    if not curve:
        return []
    total = record.num_edits
    final = Point(total, total, {c: record.value(c) for c in _columns()})
    return [p for p in curve if p.edits < total] + [final]


def _columns() -> list[str]:
    return [str(MetricName(family, protocol)) for family, _, _ in FAMILIES for protocol in (TEACHER_FORCED, WILD)]


def _x(edits: int, max_edits: int) -> float:
    return round(PAD + edits / max_edits * (WIDTH - PAD - MARGIN), 1)


def _y(v: float) -> float:
    return round(MARGIN + (1 - v) * (HEIGHT - PAD - MARGIN), 1)


def _edit_ticks(max_edits: int) -> list[int]:
    """0 and multiples of a round step (1, 2 or 5 times a power of ten): at most 6 ticks."""
    scale = 1
    while True:
        for step in (scale, 2 * scale, 5 * scale):
            if max_edits <= 5 * step:
                return list(range(0, max_edits + 1, step))
        scale *= 10


def _line(points: list[Point], column: str, max_edits: int, label: str, colour: str, dashed: bool, **extra):
    """One polyline over the points where `column` has a value (None when none has)."""
    drawn = [p for p in points if p.values.get(column) is not None]
    if not drawn:
        return None
    xy = [(_x(p.edits, max_edits), _y(p.values[column])) for p in drawn]
    return {
        "label": label,
        "colour": colour,
        "dashed": dashed,
        "points": " ".join(f"{x},{y}" for x, y in xy),
        "dots": [
            {
                "x": x,
                "y": y,
                "title": f"{label} after {p.edits:,} edits: {100 * p.values[column]:.1f} ({p.evaluated:,} evaluated)",
            }
            for (x, y), p in zip(xy, drawn)
        ],
        "href": None,
        **extra,
    }


def _plot(max_edits: int, lines: list[dict], y_label: str, aria: str, caption: str) -> dict:
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "max_edits": max_edits,
        "left": _x(0, max_edits),
        "right": _x(max_edits, max_edits),
        "top": _y(1),
        "bottom": _y(0),
        "xticks": [{"x": _x(t, max_edits), "label": f"{t:,}"} for t in _edit_ticks(max_edits)],
        "yticks": [{"y": _y(t), "label": f"{round(t * 100)}"} for t in (0, 0.25, 0.5, 0.75, 1)],
        "x_label": "Edits made",
        "y_label": y_label,
        "aria": aria,
        "caption": caption,
        "lines": lines,
    }


def _cadence(curve: list[Point]) -> str:
    """'after every K edits' when the points are evenly spaced, else the edit counts themselves."""
    edits = [p.edits for p in curve]
    steps = {b - a for a, b in zip([0, *edits], edits)}
    if len(steps) == 1:
        return f"after every {steps.pop():,} edits"
    return "after " + ", ".join(f"{n:,}" for n in edits) + " edits"


def entry_plot(record) -> dict | None:
    """Reliability, generalization and locality (teacher-forced; WILD dashed) of one record against
    the edits made; None without a curve."""
    points = series(record)
    if not points:
        return None
    max_edits = points[-1].edits
    lines = []
    for family, label, colour in FAMILIES:
        for protocol, name, dashed in ((TEACHER_FORCED, label, False), (WILD, f"{label} (WILD)", True)):
            line = _line(points, str(MetricName(family, protocol)), max_edits, name, colour, dashed)
            if line is not None:
                lines.append(line)
    if not lines:
        return None
    curve = curve_points(record)
    sampled = max(p.evaluated for p in curve)
    evaluated = "all evaluated" if all(p.evaluated >= p.edits for p in curve) else f"up to {sampled:,} evaluated"
    caption = (
        f"Lifelong curve (×100). Each point: the mean over the edits made so far ({evaluated}), "
        f"{_cadence(curve)}; the last point is the final record (all {max_edits:,} edits). "
        "Teacher-forced solid, WILD dashed."
    )
    return _plot(max_edits, lines, "Score (×100)", "Metrics of the edits made so far, by edits made", caption)


def table_plot(members, palette: list[str]) -> dict | None:
    """Reliability (teacher-forced) against the edits made, one line per entry with a curve (in
    table order, labelled by its title); None when fewer than two entries have one."""
    curved = [(e, series(e.record)) for e in members]
    curved = [(e, points) for e, points in curved if any(p.values.get(RELIABILITY) is not None for p in points)]
    if len(curved) < 2:
        return None
    max_edits = max(points[-1].edits for _, points in curved)
    lines = [
        _line(
            points,
            RELIABILITY,
            max_edits,
            e.submission.title,
            palette[k % len(palette)],
            False,
            href=f"entries/{e.slug}.html",
        )
        for k, (e, points) in enumerate(curved)
    ]
    caption = (
        "Reliability (teacher-forced, ×100) of each entry with a lifelong curve: each point is the mean "
        "over the edits made so far; the last point of a line is the entry's final record."
    )
    return _plot(max_edits, lines, "Reliability (×100)", "Reliability by edits made, one line per entry", caption)
