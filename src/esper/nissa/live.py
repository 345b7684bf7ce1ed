"""The live view: a Rich screen of a run drawn from its telemetry events.

:class:`LiveView` renders a :class:`~esper.nissa.run_state.RunState`: progress, the latest
train/val numbers with sparklines, one row per slot and the last lifecycle events.
:class:`LiveSink` puts it on a terminal during ``esper train --live``; ``esper watch`` draws the
same view from ``events.jsonl``.

Why a sink: the trainer emits events per epoch and per lifecycle change, never per training
step, so a view that only reacts to events adds nothing to the step loop. The sink records the
event under a lock (microseconds) and a background thread redraws at most
``refresh_per_second`` times a second, and only when something changed; between events it sleeps.
A redraw holds the interpreter for a few milliseconds, so the rate bounds what the view costs a
run that emits events faster than it (see ``DEFAULT_LIVE_REFRESH_PER_SECOND``).
"""

from __future__ import annotations

import threading

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from esper.leyline import DEFAULT_LIVE_REFRESH_PER_SECOND, TelemetryEvent
from esper.nissa.console import format_event
from esper.nissa.run_state import RunState, SlotState, holds_seed
from esper.nissa.sinks import TelemetrySink

SPARK_CHARS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 24  # epochs shown in a sparkline
WIDE = 110  # from this many columns on, the slot table also shows seed ids
ALPHA_WIDTH = 10  # cells of the alpha bar
STAGE_STYLES = {
    "DORMANT": "dim",
    "GERMINATED": "green",
    "TRAINING": "yellow",
    "BLENDING": "dark_orange",
    "PROBATIONARY": "blue",
    "FOSSILIZED": "bold green",
    "CULLED": "red",
    "EMBARGOED": "magenta",
    "RESETTING": "dim",
}


def sparkline(values: list[float], width: int = SPARK_WIDTH) -> str:
    """The last ``width`` values as block characters, lowest ▁ to highest █.

    Args:
        values: The series, oldest first.
        width: How many of the latest values to draw.

    Returns:
        One character per value; a flat series is drawn at mid height; empty for no values.
    """
    tail = list(values)[-width:] if width > 0 else []
    if not tail:
        return ""
    low, high = min(tail), max(tail)
    if high == low:
        return SPARK_CHARS[len(SPARK_CHARS) // 2] * len(tail)
    top = len(SPARK_CHARS) - 1
    return "".join(SPARK_CHARS[round((v - low) / (high - low) * top)] for v in tail)


def alpha_bar(alpha: float | None, width: int = ALPHA_WIDTH) -> Text:
    """``██████···· 0.60``: a fixed-width bar for a blend weight in [0, 1]; ``—`` when unknown."""
    if alpha is None:
        return Text("—", style="dim")
    filled = round(max(0.0, min(1.0, alpha)) * width)
    bar = Text("█" * filled, style="cyan")
    bar.append("·" * (width - filled), style="dim")
    bar.append(f" {alpha:.2f}")
    return bar


class LiveView:
    """A renderable view of one run; feed it events, print it to any Rich console.

    Args:
        state: The state to draw; a new empty one when omitted.
        note: One line shown under the view (``esper watch`` says how to quit there).

    Example::

        view = LiveView()
        for event in read_events(run_dir / "events.jsonl"):
            view.apply(event)
        Console().print(view)
    """

    def __init__(self, state: RunState | None = None, note: str | None = None) -> None:
        self.state = state if state is not None else RunState()
        self.note = note

    def apply(self, event: TelemetryEvent) -> None:
        """Update the view's state with one event."""
        self.state.apply(event)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield render_run(self.state, note=self.note, width=options.max_width)


def render_run(state: RunState, note: str | None = None, width: int = 120) -> RenderableType:
    """Draw a run's state: header, numbers, slots, last events.

    Args:
        state: What the events said so far.
        note: An optional last line.
        width: The columns available; below ``WIDE`` the slot table leaves out seed ids
            (the blueprint and slot name still say which seed it is).

    Returns:
        A Rich renderable.
    """
    parts: list[RenderableType] = [_progress(state), _numbers(state)]
    if state.slots:
        parts.append(_slots(state, wide=width >= WIDE))
    parts.append(_events(state))
    if note:
        parts.append(Text(note, style="dim"))
    return Panel(Group(*parts), title=_title(state), title_align="left", padding=(0, 1))


def _title(state: RunState) -> str:
    info = state.info
    if not info:
        return "[bold]esper[/] · waiting for run_started"
    status = "[green]finished[/]" if state.finished else "[yellow]running[/]"
    parts = [str(info.get(k)) for k in ("mode", "task") if info.get(k) is not None]
    if info.get("seed") is not None:
        parts.append(f"seed {info['seed']}")
    return f"[bold]{' · '.join(parts)}[/] · {status}"


def _progress(state: RunState) -> RenderableType:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(ratio=1)
    grid.add_column(no_wrap=True)
    total = state.total_epochs
    label = f"epoch {state.epoch}/{total}" if total else f"epoch {state.epoch}"
    elapsed = (state.last_at or 0.0) - state.started_at if state.started_at is not None else 0.0
    bar = ProgressBar(total=float(total or 1), completed=float(state.epoch if total else 0))
    tail = f"{elapsed:6.1f}s" + (f"  rollbacks {state.rollbacks}" if state.rollbacks else "")
    grid.add_row(label, bar, tail)
    return grid


def _numbers(state: RunState) -> RenderableType:
    m = state.metrics
    grid = Table.grid(padding=(0, 2))
    for _ in range(3):
        grid.add_column(no_wrap=True)
    for split in ("train", "val", "test"):
        loss, acc = m.get(f"{split}_loss"), m.get(f"{split}_accuracy")
        if loss is not None or acc is not None:
            grid.add_row(
                Text(split, style="bold"), _fmt(loss, "loss {:.4f}"), _fmt(acc, "acc {:6.2f}%")
            )
    if "host_params" in m or "total_params" in m:
        grid.add_row(
            Text("params", style="bold"),
            _fmt(m.get("host_params"), "host {:,.0f}"),
            _fmt(m.get("total_params"), "total {:,.0f}"),
        )
    if not grid.rows:
        return Text("no epoch completed yet", style="dim")
    trend = Text(no_wrap=True, overflow="crop")
    for name, series in (("val acc", state.val_accuracy), ("val loss", state.val_loss)):
        if series:
            trend.append(f"{name} ", style="bold").append(sparkline(list(series)), "cyan")
            trend.append("   ")
    return Group(grid, trend) if trend.plain else grid


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else spec.format(value)


def _slots(state: RunState, wide: bool) -> Table:
    table = Table(
        box=None, padding=(0, 1), collapse_padding=True, pad_edge=False, header_style="bold"
    )
    table.add_column("slot", no_wrap=True)
    if wide:
        table.add_column("seed", no_wrap=True, overflow="ellipsis", max_width=28)
    table.add_column("blueprint", no_wrap=True)
    # The stage and the numbers are what the row is for: other columns give way first.
    table.add_column("stage", no_wrap=True, min_width=len("PROBATIONARY"))
    table.add_column("alpha", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("in stage", justify="right", no_wrap=True)
    table.add_column("gain", justify="right", no_wrap=True, min_width=len("+0.0000"))
    table.add_column("contrib.", justify="right", no_wrap=True, min_width=len("+0.00 pt"))
    table.add_column("isolation" if wide else "iso.", justify="right", no_wrap=True)
    for slot in state.slots.values():
        cells = _slot_cells(slot, state.epoch, ALPHA_WIDTH if wide else ALPHA_WIDTH - 7)
        table.add_row(*(cells if wide else cells[:1] + cells[2:]))
    return table


def _slot_cells(slot: SlotState, epoch: int, alpha_width: int) -> list[RenderableType]:
    shows_alpha = slot.seed_id is not None and holds_seed(slot.stage)
    violations = Text(str(slot.violations), style="bold red" if slot.violations else "")
    return [
        Text(slot.name, style="bold"),
        slot.seed_id or Text("—", style="dim"),
        slot.blueprint or Text("—", style="dim"),
        Text(slot.stage, style=STAGE_STYLES.get(slot.stage, "")),
        alpha_bar(slot.alpha if shows_alpha else None, alpha_width),
        _fmt(slot.params, "{:,}"),
        f"{max(0, epoch - slot.stage_since)} ep" if slot.seed_id else "",
        _fmt(slot.incubation_gain, "{:+.4f}"),
        _fmt(slot.contribution, "{:+.2f} pt"),
        violations,
    ]


def _events(state: RunState) -> RenderableType:
    lines = [line for e in state.events if (line := format_event(e)) is not None]
    if not lines:
        return Text("no lifecycle events yet", style="dim")
    texts = [Text("last lifecycle events", style="bold")]
    texts += [Text.from_markup(line, overflow="ellipsis") for line in lines]
    for text in texts:
        text.no_wrap = True  # one line per event; a long reason is cut, not wrapped
    return Group(*texts)


class LiveSink(TelemetrySink):
    """A telemetry sink that keeps a :class:`LiveView` on the terminal while a run trains.

    The view starts drawing when the sink is created and stays on screen, in its final state,
    after :meth:`close`. Use it only on a terminal (``console.is_terminal``); elsewhere print
    plain lines instead.

    Args:
        console: The terminal console to draw on.
        state: A state to start from (a resumed run passes the events before its checkpoint).
        refresh_per_second: At most this many redraws a second.

    Raises:
        ValueError: If ``refresh_per_second`` is not positive.
    """

    def __init__(
        self,
        console: Console,
        state: RunState | None = None,
        refresh_per_second: float = DEFAULT_LIVE_REFRESH_PER_SECOND,
    ) -> None:
        from rich.live import Live  # only a terminal run needs it

        if refresh_per_second <= 0:
            raise ValueError(f"refresh_per_second must be > 0, got {refresh_per_second}")
        self.view = LiveView(state)
        self._interval = 1.0 / refresh_per_second
        self._lock = threading.Lock()  # guards self.view.state between emit and the drawer
        self._changed = threading.Event()
        self._closing = threading.Event()
        self._closed = False
        self._live = Live(console=console, auto_refresh=False, transient=False)
        self._live.update(self._snapshot())
        self._live.start(refresh=True)
        self._drawer = threading.Thread(target=self._draw_loop, name="esper-live", daemon=True)
        self._drawer.start()

    def emit(self, event: TelemetryEvent) -> None:
        """Record the event; the drawing thread shows it within ``1/refresh_per_second`` s."""
        with self._lock:
            self.view.apply(event)
        self._changed.set()

    def close(self) -> None:
        """Draw the final state once more and leave it on screen. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._changed.set()  # wake the drawer so it sees the close
        self._drawer.join()
        self._live.update(self._snapshot(), refresh=True)
        self._live.stop()

    def _snapshot(self) -> RenderableType:
        # Built under the lock: the renderable holds strings and numbers copied from the state,
        # so the drawer can render it while the trainer goes on emitting.
        with self._lock:
            return render_run(self.view.state, width=self._live.console.width)

    def _draw_loop(self) -> None:
        while True:
            self._changed.wait()
            if self._closing.is_set():
                return
            self._changed.clear()
            self._live.update(self._snapshot(), refresh=True)
            # The rate limit: events arriving meanwhile set _changed and are drawn together.
            self._closing.wait(self._interval)
