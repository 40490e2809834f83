"""Changes of a `Store`'s resources delivered on an asyncio loop: what an informer gives a
controller, without the HTTP hop. The simulator's controllers, kube-proxy and pod runtime
follow the store with it; the agent never does (it watches over HTTP, as in production).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from types import TracebackType

from exporter.simulator.store import HistoryEvent, Store, Subscription


class StoreFollower:
    """Subscribes to `resources` when entered (on a running loop); `changes()` waits for the
    next batch of events, oldest first. The store may be changed from any thread."""

    def __init__(self, store: Store, resources: Sequence[str]) -> None:
        self.store = store
        self.resources = tuple(resources)
        self._subscriptions: list[Subscription] = []
        self._wake: asyncio.Event | None = None

    def __enter__(self) -> StoreFollower:
        loop = asyncio.get_running_loop()
        wake = self._wake = asyncio.Event()

        def notify() -> None:  # called with the store's lock held: only schedule
            # A loop that has closed no longer cares; the store's writer must not fail.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

        for resource in self.resources:
            _, subscription = self.store.watch(resource, self.store.resource_version, notify)
            self._subscriptions.append(subscription)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for subscription in self._subscriptions:
            subscription.close()
        self._subscriptions.clear()

    async def changes(self) -> list[HistoryEvent]:
        """The events since the last call (at least one), in resourceVersion order."""
        if self._wake is None:
            raise RuntimeError("enter the StoreFollower first")
        while True:
            await self._wake.wait()
            self._wake.clear()
            events = [e for s in self._subscriptions for e in s.take()]
            if events:
                return sorted(events, key=lambda e: e.resource_version)
