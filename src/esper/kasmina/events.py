"""Subscribers to lifecycle events (``esper.leyline.lifecycle``), held so that they never travel
with the model: not in ``state_dict``, not in checkpoints, not into ``copy.deepcopy`` or pickle.

A listener is usually a bound method of a trainer or a telemetry hub. Copying it with the model
would copy the trainer (or fail); a model's copy is a different model, so it starts with no
listeners and whoever wants its events subscribes to it.
"""

from __future__ import annotations

from esper.leyline import LifecycleEvent, LifecycleListener


class Listeners:
    """An ordered set of lifecycle listeners, called in subscription order."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: list[LifecycleListener] = []

    def subscribe(self, listener: LifecycleListener) -> LifecycleListener:
        """Add ``listener`` (a second subscription of the same listener changes nothing).

        Returns:
            ``listener`` itself, so ``subscribe`` works as a decorator.

        Raises:
            TypeError: ``listener`` is not callable.
        """
        if not callable(listener):
            raise TypeError(f"a lifecycle listener must be callable, got {listener!r}")
        if listener not in self._items:
            self._items.append(listener)
        return listener

    def unsubscribe(self, listener: LifecycleListener) -> None:
        """Remove ``listener``.

        Raises:
            ValueError: ``listener`` is not subscribed.
        """
        try:
            self._items.remove(listener)
        except ValueError:
            raise ValueError(f"{listener!r} is not subscribed") from None

    def emit(self, event: LifecycleEvent) -> None:
        """Call every listener with ``event``. A listener's exception propagates to the caller."""
        # A copy, so a listener may unsubscribe itself while being called.
        for listener in tuple(self._items):
            listener(event)

    def __len__(self) -> int:
        return len(self._items)

    def __deepcopy__(self, memo: dict) -> Listeners:
        return Listeners()

    def __reduce__(self):
        return (Listeners, ())
