"""``--log tensorboard``: a run's telemetry as TensorBoard event files in ``RUN_DIR/tensorboard``.

Open them next to other runs with ``tensorboard --logdir runs``. Scalars, with the epoch as the
step:

* ``loss/train``, ``loss/val``, ``accuracy/train``, ``accuracy/val`` (and ``*/test`` when an
  event carries test numbers), ``params/host``, ``params/total``;
* ``alpha/<slot>`` for every slot holding a seed, ``contribution/<slot>`` for every
  counterfactual measurement.

Lifecycle events (germinated, stage changes, fossilized, culled, rollbacks, isolation
violations) are text under ``lifecycle``: one entry per epoch, listing that epoch's events.

The writer is ``torch.utils.tensorboard.SummaryWriter``, which needs the ``tensorboard``
package: an optional extra (``pip install "esper[tensorboard]"``), imported only when this logger
is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text

from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa.console import format_event
from esper.nissa.sinks import (
    LoggerContext,
    LoggerUnavailableError,
    TelemetrySink,
    register_logger,
)

T = TelemetryEventType
#: The folder under a run directory that holds the event files.
TENSORBOARD_DIR = "tensorboard"


def _summary_writer_class() -> type:
    """``SummaryWriter``, or :class:`LoggerUnavailableError` when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's module imports the tensorboard package at the top
        raise LoggerUnavailableError("tensorboard", "tensorboard", "tensorboard") from None
    return SummaryWriter


def _check_tensorboard() -> None:
    _summary_writer_class()


def scalar_tag(key: str) -> str:
    """The TensorBoard tag for a number of an ``epoch_completed`` event.

    ``val_loss`` -> ``loss/val``, ``train_accuracy`` -> ``accuracy/train``, ``host_params`` ->
    ``params/host``; other numbers go under ``run/``.

    Args:
        key: A key of the event's data.

    Returns:
        The tag.
    """
    split, _, metric = key.partition("_")
    if metric in ("loss", "accuracy"):
        return f"{metric}/{split}"
    if metric == "params":
        return f"params/{split}"
    return f"run/{key}"


class TensorBoardSink(TelemetrySink):
    """Writes scalars and lifecycle text for every event it receives.

    Args:
        log_dir: Where the event files go.
        purge_step: For a resumed run, the first epoch written again: TensorBoard drops what
            earlier files hold from that step on, so replayed epochs are not shown twice.

    Raises:
        LoggerUnavailableError: If the ``tensorboard`` package is not installed.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        writer_class = _summary_writer_class()
        self.log_dir = Path(log_dir)
        # flush_secs is a backstop only: every epoch_completed flushes, so a TensorBoard that is
        # open during training is at most one epoch behind.
        self._writer = writer_class(log_dir=str(self.log_dir), purge_step=purge_step, flush_secs=30)
        self._pending: list[str] = []  # lifecycle lines of the epoch not yet completed
        self._pending_epoch: int | None = None
        self._closed = False

    def emit(self, event: TelemetryEvent) -> None:
        """Write the event's scalars, or buffer its lifecycle line until the epoch completes."""
        if self._closed:
            raise RuntimeError(f"TensorBoardSink for {self.log_dir} is closed")
        step = event.epoch if isinstance(event.epoch, int) else 0
        line = format_event(event)
        if line is not None:
            if self._pending and self._pending_epoch != step:
                self._flush_text()
            self._pending.append(Text.from_markup(line).plain)
            self._pending_epoch = step
        if event.event_type is T.EPOCH_COMPLETED:
            self._epoch(event.data, step)
        elif event.event_type is T.COUNTERFACTUAL_EVALUATED and event.slot is not None:
            self._scalar(f"contribution/{event.slot}", event.data.get("contribution"), step)
        elif event.event_type is T.RUN_STARTED:
            described = ", ".join(f"{k}={v}" for k, v in event.data.items())
            self._writer.add_text("run", described, step)
        elif event.event_type is T.RUN_COMPLETED:
            self._flush_text()
            self._writer.flush()

    def _epoch(self, data: dict[str, Any], step: int) -> None:
        for key, value in data.items():
            self._scalar(scalar_tag(key), value, step)
        for slot, seed in (data.get("seeds") or {}).items():
            if isinstance(seed, dict):
                self._scalar(f"alpha/{slot}", seed.get("alpha"), step)
        self._flush_text()
        self._writer.flush()

    def _scalar(self, tag: str, value: Any, step: int) -> None:
        # Booleans (rolled_back) and non-numbers (a NaN loss written as text) are not curves.
        if isinstance(value, int | float) and not isinstance(value, bool):
            self._writer.add_scalar(tag, float(value), step)

    def _flush_text(self) -> None:
        if self._pending:
            # Markdown: two trailing spaces end a line.
            self._writer.add_text("lifecycle", "  \n".join(self._pending), self._pending_epoch)
            self._pending = []

    def close(self) -> None:
        """Write what is buffered and close the files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._flush_text()
        self._writer.close()


@register_logger("tensorboard", check=_check_tensorboard)
def tensorboard_logger(context: LoggerContext) -> TensorBoardSink:
    """The ``--log tensorboard`` logger: event files under ``RUN_DIR/tensorboard``.

    Args:
        context: The run; a resumed one purges its replayed epochs.

    Returns:
        The sink.

    Raises:
        LoggerUnavailableError: If the ``tensorboard`` package is not installed.
    """
    purge = context.start_epoch + 1 if context.start_epoch > 0 else None
    return TensorBoardSink(context.run_dir / TENSORBOARD_DIR, purge_step=purge)
