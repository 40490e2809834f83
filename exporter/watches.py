"""Watch handlers: each feeds one resource's lists and events into its tracker, and records,
logs and announces what the tracker detects. Bad objects are counted and logged once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from exporter.core.catalog import ServiceCatalog
from exporter.core.endpoints import EndpointEvent
from exporter.core.events import LifecycleEvent, PodEventKind
from exporter.core.lifecycle import PodLifecycleTracker
from exporter.core.nodes import NodeEvent, NodeTracker
from exporter.core.peers import PeerSet
from exporter.core.pods import MalformedObject
from exporter.core.services import ServiceRef
from exporter.logs import LogOnce
from exporter.metrics import AgentMetrics

log = logging.getLogger("tailwatch.agent")
event_log = logging.getLogger("tailwatch.events")

#: Hands an event to the agent's router (exporter.runtime.Router.publish).
Publish = Callable[[object], None]


class _Handler:
    """Shared by the handlers: counting and logging what cannot be used."""

    kind = "object"

    def __init__(self, metrics: AgentMetrics) -> None:
        self.metrics = metrics
        self._bad_input = LogOnce(log)

    def malformed(self, exc: MalformedObject) -> None:
        self.metrics.count_dropped(f"malformed_{self.kind}_{exc.reason}")
        self._bad_input.warning(
            f"{self.kind}:{exc.reason}", "dropped a malformed %s object: %s", self.kind, exc
        )


class _DiffWatch(_Handler):
    """A watch whose tracker diffs each list and event into events (pods, the node): the
    events are counted, logged and published by `_emit`; malformed objects are dropped."""

    def __init__(
        self,
        tracker: PodLifecycleTracker | NodeTracker,
        metrics: AgentMetrics,
        publish: Publish,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(metrics)
        self.tracker = tracker
        self.publish = publish
        self.clock = clock

    def _emit(self, event: Any) -> None:
        raise NotImplementedError

    def on_list(self, items: list[Mapping[str, Any]]) -> None:
        result = self.tracker.sync(items, self.clock())
        for exc in result.malformed:
            self.malformed(exc)
        for event in result.events:
            self._emit(event)

    def on_event(self, event_type: str, obj: Mapping[str, Any]) -> None:
        try:
            events = self.tracker.apply(event_type, obj, self.clock())
        except MalformedObject as exc:
            self.malformed(exc)
            return
        for event in events:
            self._emit(event)


class PodWatch(_DiffWatch):
    """Feeds the pod watch into the lifecycle tracker and records what it detects."""

    kind = "pod"

    def _emit(self, event: LifecycleEvent) -> None:
        self.metrics.record(event)
        if event.kind is PodEventKind.DELETED:
            self.metrics.forget_pod(event.namespace, event.pod)
        event_log.info("lifecycle event", extra=event.as_log_fields())
        self.publish(event)


Changed = Callable[[set[ServiceRef]], None]


class ServiceWatch(_Handler):
    """Feeds the opted-in Services into the catalog; `changed` gets the Services that changed
    after every update."""

    kind = "service"

    def __init__(
        self,
        catalog: ServiceCatalog,
        metrics: AgentMetrics,
        changed: Changed,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(metrics)
        self.catalog = catalog
        self.changed = changed
        self.clock = clock

    def on_list(self, items: list[Mapping[str, Any]]) -> None:
        for exc in self.catalog.sync_services(items, self.clock()):
            self.malformed(exc)
        self.changed(self.catalog.take_changed())

    def on_event(self, event_type: str, obj: Mapping[str, Any]) -> None:
        try:
            self.catalog.apply_service(event_type, obj, self.clock())
        except MalformedObject as exc:
            self.malformed(exc)
            return
        self.changed(self.catalog.take_changed())


class EndpointSliceWatch(_Handler):
    """Feeds the opted-in Services' EndpointSlices into the endpoint tracker; reports the
    endpoint events of the Services this agent `reports` (it has latency for them)."""

    kind = "endpointslice"

    def __init__(
        self,
        catalog: ServiceCatalog,
        metrics: AgentMetrics,
        publish: Publish,
        changed: Changed,
        clock: Callable[[], float],
        *,
        reports: Callable[[ServiceRef], bool] = lambda ref: True,
    ) -> None:
        super().__init__(metrics)
        self.catalog = catalog
        self.publish = publish
        self.changed = changed
        self.clock = clock
        self.reports = reports

    def _emit(self, events: list[EndpointEvent]) -> None:
        """First the changed Services (targets, which Services this agent reports), then
        the events of those it reports."""
        self.changed(self.catalog.take_changed())
        for event in events:
            if not self.reports(event.service):
                continue
            self.metrics.record_endpoint(event)
            event_log.info("endpoint event", extra=event.as_log_fields())
            self.publish(event)

    def on_list(self, items: list[Mapping[str, Any]]) -> None:
        result = self.catalog.endpoints.sync(items, self.clock())
        for exc in result.malformed:
            self.malformed(exc)
        self._emit(result.events)

    def on_event(self, event_type: str, obj: Mapping[str, Any]) -> None:
        try:
            events = self.catalog.endpoints.apply(event_type, obj, self.clock())
        except MalformedObject as exc:
            self.malformed(exc)
            return
        self._emit(events)

    def flush(self) -> None:
        """Report the slice removals held for their grace (`EndpointTracker.flush`)."""
        if self.catalog.endpoints.held:
            self._emit(self.catalog.endpoints.flush(self.clock()))


class PeerWatch(_Handler):
    """Feeds the peer agents' pods into the peer set; `changed` gets the Services whose
    address this agent now starts or stops probing."""

    kind = "peer"

    def __init__(
        self,
        peers: PeerSet,
        metrics: AgentMetrics,
        changed: Callable[[set[str]], None],
        listed: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(metrics)
        self.peers = peers
        self.changed = changed
        self.listed = listed
        self.synced = False

    def on_list(self, items: list[Mapping[str, Any]]) -> None:
        changed = self.peers.sync(items)
        for exc in self.peers.last_malformed:
            self.malformed(exc)
        if not self.synced:
            self.synced = True
            self.listed()
        else:
            self.changed(changed)

    def on_event(self, event_type: str, obj: Mapping[str, Any]) -> None:
        try:
            changed = self.peers.apply(event_type, obj)
        except MalformedObject as exc:
            self.malformed(exc)
            return
        self.changed(changed)


class NodeWatch(_DiffWatch):
    """Feeds the watch of this agent's own Node into the node tracker; counts, logs and
    publishes the node events it detects (docs/lifecycle.md, *Node events*)."""

    kind = "node"

    def _emit(self, event: NodeEvent) -> None:
        self.metrics.record_node(event)
        event_log.info("node event", extra=event.as_log_fields())
        self.publish(event)
