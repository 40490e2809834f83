"""What one watcher sees: which objects its selectors select, how a stored change becomes the
watch event it receives (the real watch cache's rules), and how events are encoded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.simulator.resources import Object, ResourceType
from exporter.simulator.selectors import FieldSelector, LabelSelector
from exporter.simulator.store import HistoryEvent

INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass(frozen=True)
class Selection:
    """The objects one list or watch request selects: namespace, labels and fields."""

    rtype: ResourceType
    namespace: str | None = None
    labels: LabelSelector = field(default_factory=LabelSelector)
    fields: FieldSelector = field(default_factory=FieldSelector)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if not self.labels.empty and not self.labels.matches(meta.get("labels")):
            return False
        return self.fields.empty or self.fields.matches(self.rtype.fields(obj))

    @property
    def has_selectors(self) -> bool:
        return not (self.labels.empty and self.fields.empty)


def watch_event(event: HistoryEvent, selection: Selection) -> tuple[str, Object] | None:
    """The event a watcher with `selection` receives for a stored change, if any.

    As in the apiserver's cacher: an object that starts matching arrives as ADDED, one that
    stops matching as DELETED (its previous state, at the change's resourceVersion), and a
    DELETED is sent only to watchers its last state matched.
    """
    now = event.type != "DELETED" and selection.matches(event.object)
    before = event.previous is not None and selection.matches(event.previous)
    if now and not before:
        return "ADDED", event.object
    if now and before:
        return "MODIFIED", event.object
    if before:
        if event.type == "DELETED":
            return "DELETED", event.object
        assert event.previous is not None
        gone = {
            **event.previous,
            "metadata": {
                **event.previous["metadata"],
                "resourceVersion": str(event.resource_version),
            },
        }
        return "DELETED", gone
    return None


def bookmark(
    rtype: ResourceType, resource_version: int, initial_events_end: bool = False
) -> Object:
    """A BOOKMARK object: only kind, apiVersion and the resourceVersion (and, ending the
    initial events of a `sendInitialEvents` watch, the annotation that says so)."""
    metadata: Object = {"resourceVersion": str(resource_version)}
    if initial_events_end:
        metadata["annotations"] = {INITIAL_EVENTS_END: "true"}
    return {"kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": metadata}


def encode_event(event_type: str, obj: Mapping[str, Any]) -> bytes:
    """One line of a JSON watch stream."""
    return json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n"


class Waker:
    """Wakes one watch stream's task; `set()` may be called from any thread."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._event = asyncio.Event()

    def set(self) -> None:
        if threading.get_ident() == self._thread:
            self._event.set()
            return
        # A closed loop means the stream is gone and needs no wake-up.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event.set)

    def clear(self) -> None:
        self._event.clear()

    async def wait(self, seconds: float | None) -> None:
        """Until `set()` or `seconds` have passed, whichever comes first."""
        if seconds is not None and seconds <= 0:
            return
        try:
            async with asyncio.timeout(seconds):
                await self._event.wait()
        except TimeoutError:
            pass
