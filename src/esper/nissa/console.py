"""The console sink: one compact Rich line per lifecycle event.

Per-epoch metrics (``epoch_completed``) and gradient telemetry are shown by the trainer itself,
so this sink prints only the moments a reader wants to notice: a seed appearing, changing stage,
being kept or cut, a governor rollback, an isolation violation. Each printable event type has a
formatter in ``_FORMATTERS``; every other type is ignored. :func:`format_event` is shared with the
live view's "last events" panel, so both say the same thing about an event.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa.sinks import TelemetrySink, register_sink

T = TelemetryEventType


def _where(event: TelemetryEvent) -> str:
    """``"epoch 3 mid/seed-1"``: the prefix every line starts with."""
    epoch = f"epoch {event.epoch}" if event.epoch is not None else "epoch ?"
    who = "/".join(escape(str(p)) for p in (event.slot, event.seed_id) if p is not None)
    return f"[dim]{epoch}[/dim] [bold]{who}[/bold]" if who else f"[dim]{epoch}[/dim]"


def _reason(event: TelemetryEvent) -> str:
    reason = event.data.get("reason")
    return f": {escape(str(reason))}" if reason else ""


def _germinated(e: TelemetryEvent) -> str:
    blueprint = escape(str(e.data.get("blueprint", "?")))
    blend = e.data.get("blend")
    extra = f", blend {escape(str(blend))}" if blend else ""
    return f"{_where(e)} [green]germinated[/green] {blueprint}{extra}"


def _stage_changed(e: TelemetryEvent) -> str:
    src, dst = escape(str(e.data.get("from", "?"))), escape(str(e.data.get("to", "?")))
    return f"{_where(e)} {src} [cyan]→[/cyan] {dst}"


def _fossilized(e: TelemetryEvent) -> str:
    return f"{_where(e)} [blue]fossilized[/blue]{_reason(e)}"


def _culled(e: TelemetryEvent) -> str:
    return f"{_where(e)} [red]culled[/red]{_reason(e)}"


def _rollback(e: TelemetryEvent) -> str:
    loss = e.data.get("loss")
    loss_txt = f" (loss {loss:.4g})" if isinstance(loss, int | float) else ""
    return f"{_where(e)} [bold yellow]governor rollback[/bold yellow]{_reason(e)}{loss_txt}"


def _isolation(e: TelemetryEvent) -> str:
    # The payload is kasmina's business; show it as key=value so nothing is hidden.
    details = ", ".join(f"{escape(str(k))}={escape(str(v))}" for k, v in e.data.items())
    return f"{_where(e)} [bold red]isolation violation[/bold red] {details}".rstrip()


_FORMATTERS: dict[TelemetryEventType, Callable[[TelemetryEvent], str]] = {
    T.SEED_GERMINATED: _germinated,
    T.SEED_STAGE_CHANGED: _stage_changed,
    T.SEED_FOSSILIZED: _fossilized,
    T.SEED_CULLED: _culled,
    T.GOVERNOR_ROLLBACK: _rollback,
    T.ISOLATION_VIOLATION: _isolation,
}


def format_event(event: TelemetryEvent) -> str | None:
    """The Rich-markup line for a lifecycle event.

    Args:
        event: Any event.

    Returns:
        One line of Rich markup (values from the event are escaped), or None for an event type
        that is not a lifecycle moment (epochs, gate evaluations, decisions, ...).
    """
    formatter = _FORMATTERS.get(event.event_type)
    return None if formatter is None else formatter(event)


@register_sink("console")
class ConsoleSink(TelemetrySink):
    """Prints lifecycle events to a Rich console.

    Args:
        console: Where to print; a new stdout ``Console`` when omitted. Pass the CLI's console
            so telemetry lines interleave correctly with progress output.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console if console is not None else Console()

    def emit(self, event: TelemetryEvent) -> None:
        line = format_event(event)
        if line is not None:
            self.console.print(line, highlight=False)

    def close(self) -> None:
        """Nothing to release: the console belongs to the caller."""
