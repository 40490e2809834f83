"""The agent's event router: one typed bus between the parts that see things happen (the
watches, the cgroup sampler, the prober, the OTLP receiver, the correlator) and the parts
that act on them (the correlator, the episode log and metrics, the Event emitter, the demo).

A publisher calls `publish(event)`; every handler subscribed to the event's class (or a base
class of it) hears it, in the order they subscribed. A handler that raises does not keep
the event from the others, nor stop the publisher: its failure is handed to `on_error`
(the agent counts it in tailwatch_dropped_total{reason="internal_error"} and logs it with
its traceback) and counted per handler in `failures`. Publishing is synchronous: a handler
runs on the publisher's thread (the event loop for everything but nothing here), so an
event is handled before the next one is published.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

E = TypeVar("E")
Handler = Callable[[Any], None]
ErrorSink = Callable[[str, BaseException], None]


def _name(handler: Handler) -> str:
    return getattr(handler, "__qualname__", type(handler).__qualname__)


class Router:
    """Typed publish/subscribe, dispatch by the event's class (its bases included)."""

    def __init__(self, on_error: ErrorSink | None = None) -> None:
        self._handlers: dict[type, list[Handler]] = {}
        # Per concrete class: its handlers and its bases', resolved once.
        self._resolved: dict[type, tuple[Handler, ...]] = {}
        self.on_error = on_error
        self.failures: dict[str, int] = {}

    def subscribe(
        self, kind: type[E], handler: Callable[[E], None], *, first: bool = False
    ) -> Callable[[], None]:
        """`handler` hears every published `kind` from now on (before the handlers already
        there when `first`); returns its unsubscribe."""
        held = self._handlers.setdefault(kind, [])
        held.insert(0, handler) if first else held.append(handler)
        self._resolved.clear()

        def unsubscribe() -> None:
            held = self._handlers.get(kind, [])
            if handler in held:
                held.remove(handler)
                self._resolved.clear()

        return unsubscribe

    def handlers(self, kind: type) -> tuple[Handler, ...]:
        """Who hears a `kind`, in order: the handlers of its own class first, then of each
        base class (most derived first), each in the order they subscribed."""
        held = self._resolved.get(kind)
        if held is None:
            held = tuple(h for base in kind.__mro__ for h in self._handlers.get(base, ()))
            self._resolved[kind] = held
        return held

    def publish_all(self, events: Iterable[object]) -> None:
        """Each of `events` in turn, each on its own: a handler failing on one does not
        keep the others from anyone."""
        for event in events:
            self.publish(event)

    def publish(self, event: object) -> None:
        for handler in self.handlers(type(event)):
            try:
                handler(event)
            except Exception as exc:
                name = _name(handler)
                self.failures[name] = self.failures.get(name, 0) + 1
                if self.on_error is not None:
                    self.on_error(f"event handler {name}", exc)
