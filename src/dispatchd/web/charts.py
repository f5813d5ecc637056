"""The overview's charts, drawn on the server as SVG (no chart library in the browser).

The series come from the tasks' own times: a task was queued from its creation until it
started or finished; it counts towards throughput in the bucket where it finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

from dispatchd.domain.models import Task

WINDOW = timedelta(hours=1)
BUCKET = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Series:
    title: str
    unit: str  # the y axis's unit, printed on the axis
    points: list[tuple[datetime, float]]


def _queued_at(task: Task, at: datetime) -> bool:
    if task.created_at > at:
        return False
    left = min((t for t in (task.started_at, task.finished_at) if t is not None), default=None)
    return left is None or left > at


def history(tasks: Sequence[Task], now: datetime) -> tuple[Series, Series]:
    """Queue depth sampled every BUCKET and tasks finished per BUCKET, over the last hour."""
    start = now - WINDOW
    steps = int(WINDOW / BUCKET)
    depth: list[tuple[datetime, float]] = []
    done: list[tuple[datetime, float]] = []
    for i in range(steps + 1):
        at = start + BUCKET * i
        depth.append((at, float(sum(1 for t in tasks if _queued_at(t, at)))))
    for i in range(steps):
        lo, hi = start + BUCKET * i, start + BUCKET * (i + 1)
        n = sum(1 for t in tasks if t.finished_at is not None and lo < t.finished_at <= hi)
        done.append((hi, float(n)))
    return (
        Series("Queue depth", "tasks", depth),
        Series("Throughput", "tasks / 5 min", done),
    )


W, H = 420, 180
LEFT, RIGHT, TOP, BOTTOM = 48, 26, 22, 34


def svg(series: Series, *, bars: bool = False) -> str:
    """The series as an SVG chart with labelled axes: time (UTC) along x, `unit` up y."""
    pts = series.points
    top = max([v for _, v in pts] + [1.0])
    top = float(int(top) + (0 if top == int(top) else 1))
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    n = max(len(pts) - 1, 1)

    def x(i: int) -> float:
        return LEFT + plot_w * i / n

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" '
        f'class="chart" aria-label="{escape(series.title)} ({escape(series.unit)})">',
        f'<text x="{LEFT}" y="14" class="chart-title">{escape(series.title)}</text>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" class="axis"/>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{W - RIGHT}" y2="{TOP + plot_h}" '
        'class="axis"/>',
    ]
    for v in (0.0, top / 2, top):
        label = f"{v:g}"
        parts.append(
            f'<text x="{LEFT - 4}" y="{y(v) + 4:.1f}" text-anchor="end" class="tick">{label}</text>'
        )
    parts.append(
        f'<text x="12" y="{TOP + plot_h / 2:.1f}" class="unit" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + plot_h / 2:.1f})">{escape(series.unit)}</text>'
    )
    if pts:
        for i in (0, len(pts) // 2, len(pts) - 1):
            stamp = pts[i][0].strftime("%H:%M")
            parts.append(
                f'<text x="{x(i):.1f}" y="{TOP + plot_h + 14}" text-anchor="middle" '
                f'class="tick">{stamp}</text>'
            )
        parts.append(
            f'<text x="{LEFT + plot_w / 2:.1f}" y="{H - 4}" text-anchor="middle" '
            'class="unit">time (UTC)</text>'
        )
        if bars:
            width = plot_w / len(pts) * 0.8
            for i, (_, v) in enumerate(pts):
                bx = LEFT + plot_w * i / len(pts) + width * 0.1
                parts.append(
                    f'<rect x="{bx:.1f}" y="{y(v):.1f}" width="{width:.1f}" '
                    f'height="{TOP + plot_h - y(v):.1f}" class="bar"><title>{v:g}</title></rect>'
                )
        else:
            line = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, (_, v) in enumerate(pts))
            parts.append(f'<polyline points="{line}" class="line"/>')
    parts.append("</svg>")
    return "".join(parts)
