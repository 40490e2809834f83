"""The agent's wiring: watches, lifecycle tracking, metrics and the HTTP server, supervised."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client.registry import CollectorRegistry

from exporter.core.events import LifecycleEvent, PodEventKind
from exporter.core.lifecycle import PodLifecycleTracker
from exporter.core.pods import MalformedObject
from exporter.kube.config import KubeConnection, load_connection
from exporter.kube.watching import (
    ApiSession,
    Reflector,
    ResourceSpec,
    WatchHealth,
    WatchTiming,
)
from exporter.logs import LogOnce
from exporter.metrics import AgentCollector, AgentMetrics
from exporter.server import build_app, start_server
from exporter.settings import Settings

log = logging.getLogger("tailwatch.agent")
event_log = logging.getLogger("tailwatch.events")

EventListener = Callable[[LifecycleEvent], None]


class PodWatch:
    """Feeds the pod watch into the lifecycle tracker and records what it detects."""

    def __init__(
        self,
        tracker: PodLifecycleTracker,
        metrics: AgentMetrics,
        listeners: list[EventListener],
        clock: Callable[[], float],
    ) -> None:
        self.tracker = tracker
        self.metrics = metrics
        self.listeners = listeners
        self.clock = clock
        self._bad_input = LogOnce(log)

    def _malformed(self, exc: MalformedObject) -> None:
        self.metrics.count_dropped(f"malformed_pod_{exc.reason}")
        self._bad_input.warning(exc.reason, "dropped a malformed pod object: %s", exc)

    def _emit(self, event: LifecycleEvent) -> None:
        self.metrics.record(event)
        if event.kind is PodEventKind.DELETED:
            self.metrics.forget_pod(event.namespace, event.pod)
        event_log.info("lifecycle event", extra=event.as_log_fields())
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed")

    def on_list(self, items: list[Mapping[str, Any]]) -> None:
        result = self.tracker.sync(items, self.clock())
        for exc in result.malformed:
            self._malformed(exc)
        for event in result.events:
            self._emit(event)

    def on_event(self, event_type: str, obj: Mapping[str, Any]) -> None:
        try:
            events = self.tracker.apply(event_type, obj, self.clock())
        except MalformedObject as exc:
            self._malformed(exc)
            return
        for event in events:
            self._emit(event)


class Agent:
    """One tailwatch agent: everything `tailwatch run` starts."""

    def __init__(
        self,
        settings: Settings,
        *,
        connection: KubeConnection | None = None,
        timing: WatchTiming | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.connection = connection
        self.timing = timing or WatchTiming()
        self.clock = clock
        self.monotonic = monotonic
        self.metrics = AgentMetrics()
        self.tracker = PodLifecycleTracker(node=settings.node_name)
        self.listeners: list[EventListener] = []
        self.pods_health = WatchHealth("pods")
        self.healths = [self.pods_health]
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(
            AgentCollector(
                self.metrics,
                pods=self.tracker.pods,
                watches=lambda: self.healths,
                clock=monotonic,
            )
        )
        self.started = asyncio.Event()

    def readiness(self) -> tuple[bool, str]:
        now = self.monotonic()
        waiting = [
            h.resource for h in self.healths if not h.is_ready(now, self.timing.inactivity_timeout)
        ]
        if waiting:
            return False, "not ready: watches not synced: " + ", ".join(waiting)
        return True, "ready"

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set (or forever); raises OSError if --listen cannot be bound."""
        stop = stop or asyncio.Event()
        connection = self.connection or load_connection(self.settings.kubeconfig)
        runner = await start_server(build_app(self.registry, self.readiness), self.settings.listen)
        log.info(
            "tailwatch agent started",
            extra={
                "node": self.settings.node_name,
                "listen": str(self.settings.listen),
                "api": connection.host,
                "api_config": connection.source,
            },
        )
        pods = ResourceSpec(
            "pods", "/api/v1/pods", field_selector=f"spec.nodeName={self.settings.node_name}"
        )
        try:
            async with ApiSession(connection, self.timing) as api:
                handler = PodWatch(self.tracker, self.metrics, self.listeners, self.clock)
                reflector = Reflector(api, pods, handler, self.pods_health, clock=self.monotonic)
                tasks = [asyncio.create_task(reflector.run(), name="watch-pods")]
                self.started.set()
                stopper = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
                for task in [*tasks, stopper]:
                    task.cancel()
                await asyncio.gather(*tasks, stopper, return_exceptions=True)
                for task in done:
                    if task is not stopper and task.exception() is not None:
                        raise RuntimeError(f"{task.get_name()} stopped") from task.exception()
        finally:
            await runner.cleanup()
            log.info("tailwatch agent stopped")
