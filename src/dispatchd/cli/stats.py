"""`dispatchd stats`: queue depth by state and priority drawn with bars, flow and agents."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from dispatchd.cli import output
from dispatchd.cli.connect import AsOption, JsonOption, TokenOption, UrlOption, connect

BAR_WIDTH = 40
_EIGHTHS = " ▏▎▍▌▋▊▉"
PRIORITIES = ("critical", "high", "medium", "low")


def bar(value: float, largest: float, width: int = BAR_WIDTH) -> str:
    """A horizontal bar of `value` against `largest` in `width` cells, to an eighth of a
    cell; any value above zero shows at least a sliver."""
    if value <= 0 or largest <= 0:
        return ""
    eighths = max(1, round(value / largest * width * 8))
    full, rest = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


def _bars(title: str, counts: dict[str, int], styles: dict[str, str]) -> Group:
    table = Table(box=None, show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    table.add_column(no_wrap=True)
    largest = max(counts.values(), default=0)
    for name, n in counts.items():
        style = styles.get(name, "")
        table.add_row(Text(name, style=style), str(n), Text(bar(n, largest), style=style))
    return Group(Text(title, style="bold"), table)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def render(stats: dict[str, Any]) -> Group:
    queue = stats.get("queue", {})
    by_state: dict[str, int] = queue.get("by_state", {})
    matrix: dict[str, dict[str, int]] = queue.get("by_state_and_priority", {})
    by_priority = {p: sum(row.get(p, 0) for row in matrix.values()) for p in PRIORITIES}
    parts: list[Any] = [
        _bars("tasks by state", by_state, output.STATE_STYLES),
        Text(),
        _bars("unfinished tasks by priority", by_priority, output.PRIORITY_STYLES),
    ]
    if matrix:
        grid = Table(box=None, header_style="bold")
        grid.add_column("STATE")
        for p in PRIORITIES:
            grid.add_column(p.upper(), justify="right")
        for name, row in matrix.items():
            grid.add_row(output.state(name), *(str(row.get(p, 0)) for p in PRIORITIES))
        parts += [Text(), grid]

    flow = Table.grid(padding=(0, 2))
    flow.add_column(style="bold", no_wrap=True)
    flow.add_column()
    age = queue.get("oldest_pending_age_s")
    flow.add_row("oldest pending", "-" if age is None else output.span(age))
    for key, name in (("wait_s", "wait (created → started)"), ("run_s", "run (started → ended)")):
        s = stats.get(key, {})
        flow.add_row(
            name, f"p50 {_seconds(s.get('p50'))}  p95 {_seconds(s.get('p95'))}  n={s.get('n', 0)}"
        )
    for window, t in stats.get("throughput", {}).items():
        flow.add_row(
            f"last {window}",
            f"{t.get('completed', 0)} completed, {t.get('failed', 0)} failed, "
            f"{t.get('timed_out', 0)} timed out, {t.get('cancelled', 0)} cancelled "
            f"({t.get('completed_per_s', 0):g}/s)",
        )
    agents = stats.get("agents", {}).get("by_state", {})
    flow.add_row("agents", "  ".join(f"{k} {v}" for k, v in agents.items()) or "-")
    parts += [Text(), flow]
    return Group(*parts)


def stats(
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Queue depth by state and priority, wait and run times, throughput, agents (admin)."""
    with connect(url, as_, token) as (client, _):
        found = client.stats()
    if json_:
        output.emit_json(found)
    else:
        output.stdout().print(render(found))
