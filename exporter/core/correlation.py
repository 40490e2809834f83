"""The correlation core (docs/correlation.md): episodes of each opted-in Service, built from
lifecycle events (node-local pod events and the cluster view of endpoints), latency samples
(the prober and OTLP clients) and cgroup samples; and the `state` of every latency sample.

An episode opens at the first disruptive event touching a Service and closes when every
endpoint is ready, none is terminating and the set has been stable for `settle`; a tail
spike with no lifecycle event is an episode too (`resource_pressure` or `unexplained`),
from when its tail rose to when it fell. Impact compares latency during the episode with
the steady baseline before it; recovery is when latency really returned within tolerance
after the close, found once a window confirms it (exporter/core/tails.py). The episodes
themselves, and their words and JSON, are in exporter/core/episodes.py. Pure: every call
takes `now` (epoch seconds).
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.core.attribution import (
    ContainerReading,
    NeighbourWindow,
    PodKey,
    Pressure,
    PressureReading,
    ResourceTracker,
    node_pressure_between,
    rank_neighbours,
)
from exporter.core.endpoints import Endpoint, EndpointEvent
from exporter.core.episodes import (
    ChangeKind,
    Episode,
    EpisodeChange,
    Evidence,
    LatencyImpact,
    ServiceState,
    Source,
    Status,
    iso,
)
from exporter.core.events import LifecycleEvent, Workload
from exporter.core.histogram import FineHistogram
from exporter.core.nodes import NodeEvent, NodeEventKind
from exporter.core.quantiles import Tail
from exporter.core.restore import EpisodeRecord, plan_restore, restored_episode
from exporter.core.rules import (
    DISRUPTIVE_POD_EVENTS,
    CorrelationSettings,
    ServiceIndex,
    add_evidence,
    endpoint_disrupts,
    impact_of,
    join,
    pod_key,
    slow_interval,
    update_cause,
)
from exporter.core.services import ServiceRef
from exporter.core.tails import ServiceLatency, one_sample

#: Non-disruptive events remembered per Service, for the episode they may lead to.
PRECEDING_EVENTS = 16
#: Bad node events remembered, for the episodes that open within `settle` after them.
RECENT_NODE_EVENTS = 16

#: Node states that may stand for days without hurting anyone (docs/correlation.md).
_STANDING = frozenset({NodeEventKind.CORDONED, NodeEventKind.TAINTED})
#: `interrupted_by` of a restored episode whose recovery could no longer be judged.
RESTART_INTERRUPTION = "agent restart"

Changes = list[EpisodeChange]


@dataclass
class _ServiceView:
    """What the correlator holds per Service."""

    ref: ServiceRef
    latency: ServiceLatency
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    episode: Episode | None = None  # open, or recovering
    local_pods: set[PodKey] = field(default_factory=set)
    seq: int = 0
    # Events that touched the Service while it was steady without disrupting it.
    preceding: deque[EndpointEvent | LifecycleEvent] = field(
        default_factory=lambda: deque(maxlen=PRECEDING_EVENTS)
    )


class Correlator:
    """Episodes of the opted-in Services this agent knows.

    Inputs: `set_services`, `endpoints_changed` (the endpoint view after every change),
    `on_endpoint_event`, `on_pod_event`, `record_latency`/`record_latency_ranges`,
    `observe_resources`, and `tick` (every `settings.tick_interval` seconds). The event
    handlers and `tick` return the `EpisodeChange`s they caused (episodes change state
    only there). `state_of` gives the `state` label of a sample.
    `workloads()` maps this node's pods (namespace, name) to their workloads.
    """

    def __init__(
        self,
        settings: CorrelationSettings | None = None,
        *,
        node: str = "",
        workloads: Callable[[], Mapping[PodKey, Workload]] = dict,
        node_state: Callable[[], Iterable[NodeEvent]] = tuple,
    ) -> None:
        self.settings = settings or CorrelationSettings()
        self.node = node
        self.workloads = workloads
        # The bad states this agent's node is in now (NodeTracker.degraded), and the bad node
        # events of late; the Services with endpoints on this node, which they concern.
        self.node_state = node_state
        self._node_events: deque[NodeEvent] = deque(maxlen=RECENT_NODE_EVENTS)
        self._on_node: set[ServiceRef] = set()
        self._index = ServiceIndex()
        self.services: dict[ServiceRef, _ServiceView] = {}
        self.recent: list[Episode] = []  # finished episodes, newest last
        # Per Service, the highest episode number read back from its Events (`restore`):
        # the ids of its new episodes continue after it.
        self._seq_floor: dict[ServiceRef, int] = {}
        s = self.settings
        self.resources = ResourceTracker(s.baseline, history=s.recovery_window + s.settle)

    # -- services and endpoints --------------------------------------------------------

    def set_services(self, refs: Iterable[ServiceRef]) -> None:
        """The opted-in Services now. A Service that left is forgotten with its episode."""
        wanted = set(refs)
        for gone in [r for r in self.services if r not in wanted]:
            del self.services[gone]
            self._index.stale = True
        for ref in wanted:
            if ref not in self.services:
                self.services[ref] = self._new_view(ref)

    def add_service(self, ref: ServiceRef) -> None:
        """Keep episodes for `ref` from now on (this agent has latency for it)."""
        if ref not in self.services:
            self.services[ref] = self._new_view(ref)

    def has_episode(self, ref: ServiceRef) -> bool:
        """Is an episode of `ref` open, or closed and waiting for its recovery?"""
        view = self.services.get(ref)
        return view is not None and view.episode is not None

    def remove_service(self, ref: ServiceRef) -> None:
        """Forget `ref` with its episode (gone, or this agent no longer has latency for it)."""
        if self.services.pop(ref, None) is not None:
            self._index.stale = True
        self._on_node.discard(ref)

    def _new_view(self, ref: ServiceRef) -> _ServiceView:
        return _ServiceView(ref, ServiceLatency(self.settings), seq=self._seq_floor.get(ref, 0))

    def baseline_of(self, ref: ServiceRef, now: float) -> Tail | None:
        """The steady baseline of the Service's headline latency up to `now`: whether it can
        bound a p99 yet (`.p99.supported`) tells if episodes of it can be judged."""
        view = self.services.get(ref)
        source = view.latency.primary() if view is not None else None
        if view is None or source is None:
            return None
        return view.latency.baseline(source, now)

    def _view(self, ref: ServiceRef) -> _ServiceView | None:
        return self.services.get(ref)

    def endpoints_changed(self, ref: ServiceRef, endpoints: Mapping[str, Endpoint]) -> None:
        """The Service's endpoints after a change (`EndpointTracker.view`)."""
        view = self._view(ref)
        if view is None or endpoints == view.endpoints:
            return
        view.endpoints = dict(endpoints)
        view.local_pods = {
            pod_key(e) for e in endpoints.values() if e.pod and self.node and e.node == self.node
        }
        if view.local_pods:
            self._on_node.add(ref)
        if view.episode is not None and view.episode.open:
            view.episode.pods |= view.local_pods
        self._index.stale = True

    # -- lifecycle events ----------------------------------------------------------------

    def on_endpoint_event(self, event: EndpointEvent) -> list[EpisodeChange]:
        view = self._view(event.service)
        changes: Changes = []
        if view is None:
            return changes
        self._flush(view, event.at)
        disruptive = endpoint_disrupts(event, view.endpoints.get(event.identity))
        self._event(view, event, disruptive, changes)
        return changes

    def on_pod_event(self, event: LifecycleEvent) -> list[EpisodeChange]:
        views = ((v.ref, v.endpoints, v.local_pods) for v in self.services.values())
        refs = self._index.services_of(event, views, self.workloads)
        changes: Changes = []
        for ref in sorted(refs, key=str):
            view = self._view(ref)
            if view is None:
                continue
            self._flush(view, event.at)
            self._event(view, event, event.kind in DISRUPTIVE_POD_EVENTS, changes)
        return changes

    def on_node_event(self, event: NodeEvent) -> list[EpisodeChange]:
        """A change of this agent's node. It joins the open episode of every Service with
        endpoints on the node; a bad state (not ready, pressure, cordoned, tainted) makes
        its cause `node`. It opens no episode by itself (a cordon alone hurts nobody), but
        an episode that opens while the node is unwell, or within `settle` after a bad
        event, is joined by it then (`_join_node_state`). O(Services with endpoints here)."""
        if event.bad:
            self._node_events.append(event)
        for ref in sorted(self._on_node, key=str):
            view = self._view(ref)
            episode = view.episode if view is not None else None
            if view is None or not (view.local_pods or (episode is not None and episode.open)):
                self._on_node.discard(ref)  # gone, or no longer on this node
                continue
            if episode is not None and episode.open and (view.local_pods or episode.pods):
                join(episode, event, self.node, self.settings)
        return []

    def _join_node_state(self, view: _ServiceView, episode: Episode) -> None:
        """A new episode of a Service with endpoints on this node: the node's bad conditions
        now (NotReady, pressure), and its bad events within `settle` before, join it. A
        cordon or a NoExecute taint only when that recent: a node cordoned for days, or a
        pool's permanent tolerated taint, did not cause today's restart."""
        if not (view.local_pods or episode.pods):
            return
        since = episode.opened_at - self.settings.settle
        recent = [e for e in self._node_events if e.at >= since]
        lasting = [e for e in self.node_state() if e.kind not in _STANDING or e.at >= since]
        said: set[tuple[str, str, str]] = set()
        for event in sorted([*lasting, *recent], key=lambda e: e.at):
            key = (event.kind.value, event.reason, event.taint)
            if key not in said:
                said.add(key)
                join(episode, event, self.node, self.settings)

    def _event(
        self,
        view: _ServiceView,
        event: EndpointEvent | LifecycleEvent,
        disruptive: bool,
        changes: Changes,
    ) -> None:
        """An event touching the Service: joins the open episode, opens one if disruptive,
        else is remembered for `settle` (a rollout's new pod arrives before the first old
        one goes: that arrival belongs to the episode it leads to)."""
        episode = view.episode if view.episode is not None and view.episode.open else None
        if episode is None:
            if not disruptive:
                view.preceding.append(event)
                return
            episode = self._open(view, event.at, event.at, changes)
        join(episode, event, self.node, self.settings)

    # -- opening and closing -----------------------------------------------------------

    def _open(
        self,
        view: _ServiceView,
        at: float,
        baseline_end: float,
        changes: Changes,
        *,
        spike: tuple[float, float] | None = None,
    ) -> Episode:
        """Open an episode at `at` against the baselines before `baseline_end`; `spike` is
        (detected at, threshold) for an episode opened by a tail spike."""
        held = view.episode
        view.seq += 1
        episode_id = f"{view.ref}/{view.seq}"
        if held is not None and held.status is Status.RECOVERING:
            held.status = Status.INTERRUPTED
            held.interrupted_by = episode_id
            self._finish(view, held)
            changes.append(EpisodeChange(ChangeKind.INTERRUPTED, held))
        impacts = {
            source: LatencyImpact(source, tail, self.settings.confidence)
            for source, tail in view.latency.baselines(baseline_end).items()
        }
        episode = Episode(
            id=episode_id,
            service=view.ref,
            opened_at=at,
            latency=impacts,
            confidence=self.settings.confidence,
            last_change=at,
            pods=set(view.local_pods),
        )
        if spike is not None:
            episode.spike_detected_at, episode.spike_threshold = spike
        view.episode = episode
        self._join_node_state(view, episode)
        changes.append(EpisodeChange(ChangeKind.OPENED, episode))
        for held_event in view.preceding:
            if held_event.at >= at - self.settings.settle:
                join(episode, held_event, self.node, self.settings)
        view.preceding.clear()
        return episode

    def _endpoints_settled(self, view: _ServiceView) -> bool:
        return all(e.ready and not e.terminating for e in view.endpoints.values())

    def _close(
        self, view: _ServiceView, episode: Episode, closed_at: float, changes: Changes
    ) -> None:
        s = self.settings
        episode.closed_at = closed_at
        window = episode.attribution_window = slow_interval(episode, closed_at)
        episode.attribution = episode.pressure.ranked(s.thresholds, *window)
        self._rank_neighbours(episode, *window)
        update_cause(episode, s.thresholds)
        headline = episode.headline()
        threshold = episode.slow_threshold(s.recovery_threshold_factor, headline)
        episode.impact = impact_of(episode, threshold, s.severe_ratio)
        # Closed, it keeps its answer, not what it was measured from: no container delta is
        # read again (the cause reads the attribution from now on), and the during
        # histograms are never written again. Up to `max_recent` closed episodes are held.
        episode.pressure = Pressure()
        for impact in episode.latency.values():
            impact.during.pack()
        if threshold is None or headline is None:
            episode.status = Status.NO_BASELINE
        else:
            episode.status = Status.RECOVERING
            view.latency.start_recovery(headline.source, closed_at, threshold)
        changes.append(EpisodeChange(ChangeKind.CLOSED, episode))

    def _finish(self, view: _ServiceView, episode: Episode) -> None:
        if view.episode is episode:
            view.episode = None
            view.latency.recovery = None
        self.recent.append(episode)
        del self.recent[: -self.settings.max_recent]

    # -- latency -----------------------------------------------------------------------

    def state_of(self, namespace: str, service: str) -> str:
        view = self.services.get(ServiceRef(namespace, service))
        if view is None or view.episode is None:
            return ServiceState.STEADY.value
        if view.episode.open:
            return ServiceState.DISRUPTED.value
        return ServiceState.RECOVERING.value

    def _during(
        self, view: _ServiceView, source: Source, histogram: FineHistogram, now: float
    ) -> None:
        episode = view.episode
        if episode is not None and episode.open:
            episode.add_during(source, histogram, now, self.settings.recovery_threshold_factor)

    def record_latency(self, ref: ServiceRef, source: Source, seconds: float, now: float) -> None:
        view = self.services.get(ref)
        if view is None:
            return
        view.latency.record(source, seconds, now, steady=view.episode is None)
        if view.episode is not None and view.episode.open:
            self._during(view, source, one_sample(seconds), now)

    def record_latency_ranges(
        self,
        ref: ServiceRef,
        source: Source,
        ranges: Iterable[tuple[float, float, int]],
    ) -> None:
        """Values known by range (a client's histogram buckets), recorded at the next tick
        or state change with the state of then."""
        view = self.services.get(ref)
        if view is not None:
            view.latency.add_ranges(source, ranges)

    def _flush(self, view: _ServiceView, now: float) -> None:
        if not view.latency.pending:
            return
        flushed = view.latency.flush(now, steady=view.episode is None)
        for source, histogram in flushed.items():
            self._during(view, source, histogram, now)

    # -- resources ---------------------------------------------------------------------

    def observe_resources(
        self,
        now: float,
        readings: Iterable[ContainerReading],
        sidecars: Mapping[PodKey, frozenset[str]],
        node_pressure: Sequence[PressureReading] = (),
    ) -> None:
        """One cgroup pass of every container of this node's pods, and the node's PSI. The
        containers of pods backing a Service feed their open episodes' attribution; all of
        them are checkpointed, for every episode's neighbours (docs/correlation.md,
        *Attribution*). O(containers), plus O(1) per open episode."""
        backing: dict[PodKey, list[_ServiceView]] = {}
        open_episodes: list[Episode] = []
        for view in self.services.values():
            for pod in view.local_pods:
                backing.setdefault(pod, []).append(view)
            if view.episode is not None and view.episode.open:
                open_episodes.append(view.episode)
                for pod in view.episode.pods:
                    backing.setdefault(pod, []).append(view)
        unsteady = {
            pod for pod, views in backing.items() if any(v.episode is not None for v in views)
        }
        deltas = self.resources.observe(
            now, readings, sidecars, backing, unsteady=unsteady, node_pressure=node_pressure
        )
        for delta in deltas:
            for view in backing.get(delta.key[:2], ()):
                episode = view.episode
                if episode is not None and episode.open:
                    episode.pressure.add(delta)
        for episode in open_episodes:
            self._follow_neighbours(episode, *self._interval_so_far(episode, now))

    def _interval_so_far(self, episode: Episode, now: float) -> tuple[float, float]:
        """The slow interval of an open episode as known now (`slow_interval` once closed):
        a spike's ends when its tail fell (so far)."""
        if episode.spike_only:
            return episode.opened_at, max(episode.opened_at, episode.last_change)
        return slow_interval(episode, now)

    def _follow_neighbours(self, episode: Episode, start: float, end: float) -> bool:
        """Pin the checkpoints that bound [start, end] (`NeighbourWindow`); False before the
        first cgroup pass."""
        ring = self.resources
        window = episode.neighbour_window
        if window is None:
            latest = ring.latest
            if latest is None:
                return False
            first = ring.at_or_before(start) or ring.ring[0]
            window = episode.neighbour_window = NeighbourWindow(first, latest, start, -math.inf)
        window.follow(ring, start, end)
        return True

    def _rank_neighbours(
        self, episode: Episode, start: float, end: float, *, release: bool = True
    ) -> None:
        """The neighbours and the node's PSI over [start, end]; `release` lets go of the
        checkpoints (a closed episode keeps only its answer)."""
        if not self._follow_neighbours(episode, start, end):
            return
        window = episode.neighbour_window
        assert window is not None
        ring = self.resources
        episode.neighbours = rank_neighbours(
            window.start,
            window.end,
            own=episode.pods,
            births=ring.births,
            sidecars=ring.sidecars,
            thresholds=self.settings.thresholds,
        )
        episode.node_pressure = node_pressure_between(window.start, window.end)
        if release:
            episode.neighbour_window = None

    # -- the clock -----------------------------------------------------------------------

    def tick(self, now: float) -> Changes:
        """Close settled episodes, judge recovery, detect spikes."""
        changes: Changes = []
        for view in list(self.services.values()):
            self._flush(view, now)
            view.latency.advance(now)
            episode = view.episode
            if episode is None:
                self._detect_spike(view, now, changes)
            elif episode.open:
                self._maybe_close(view, episode, now, changes)
            elif episode.status is Status.RECOVERING:
                self._judge_recovery(view, episode, now, changes)
            else:  # closed without a baseline: nothing to wait for
                self._finish(view, episode)
                changes.append(EpisodeChange(ChangeKind.NO_BASELINE, episode))
        return changes

    def _detect_spike(self, view: _ServiceView, now: float, changes: Changes) -> None:
        """A steady Service whose tail spiked: an episode from when the tail rose."""
        s = self.settings
        latency = view.latency
        spike = latency.spike(now)
        if spike is None:
            return
        episode = self._open(
            view, spike.rose, spike.baseline_end, changes, spike=(now, spike.threshold)
        )
        add_evidence(episode, Evidence(spike.rose, "latency", "tail_spike"), s.max_events)
        # The samples since the rise were recorded as steady: they are the episode's.
        for source, impact in episode.latency.items():
            impact.during.merge(latency.since(source, spike.rose))
        episode.last_change = max(episode.last_change, spike.fell)
        for delta in self.resources.recent(episode.pods, spike.rose):
            episode.pressure.add(delta)
        # The neighbours from the rise (the ring reaches back to it) to now, until the close.
        self._rank_neighbours(episode, *self._interval_so_far(episode, now), release=False)
        update_cause(episode, s.thresholds)

    def _maybe_close(
        self, view: _ServiceView, episode: Episode, now: float, changes: Changes
    ) -> None:
        """Close once nothing changed for the settle time and every endpoint is ready (or
        the episode is older than recovery_max). A spike closes at when its tail fell."""
        s = self.settings
        spike = episode.spike_only
        if spike:
            assert episode.spike_threshold is not None
            # When it fell, from what is known now: a stray slow sample just after the spike
            # is confidently slow only until the samples after it say otherwise.
            fell = view.latency.spike_fell(episode.opened_at, episode.spike_threshold)
            if fell is not None:
                episode.last_change = fell
        if now - episode.last_change < s.settle:
            return
        long_open = now - episode.opened_at >= s.recovery_max
        if not (spike or self._endpoints_settled(view) or long_open):
            return  # (a spike is about latency: a replica not ready does not hold it open)
        if not spike:
            self._close(view, episode, now, changes)
            return
        closed_at = episode.last_change
        for source, impact in episode.latency.items():
            # What came after the fall is not the spike's (kept whole if it is not all in
            # `during`, e.g. a source that joined late).
            with contextlib.suppress(ValueError):
                impact.during = impact.during.subtract(view.latency.after(source, closed_at))
        self._close(view, episode, closed_at, changes)

    def _judge_recovery(
        self, view: _ServiceView, episode: Episode, now: float, changes: Changes
    ) -> None:
        s = self.settings
        assert episode.closed_at is not None
        track = view.latency.recovery
        moment = track.confirmed(now, s) if track is not None else None
        if moment is not None:
            episode.recovered_at = moment
            episode.detected_at = now
            episode.status = Status.RECOVERED
            self._finish(view, episode)
            changes.append(EpisodeChange(ChangeKind.RECOVERED, episode))
        elif now - episode.closed_at >= s.recovery_max:
            episode.status = Status.NOT_RECOVERED
            view.latency.baseline_from = now
            view.latency.last_baseline = None
            self._finish(view, episode)
            changes.append(EpisodeChange(ChangeKind.NOT_RECOVERED, episode))

    # -- restart -------------------------------------------------------------------------

    def restore(self, records: Iterable[EpisodeRecord], now: float) -> list[Episode]:
        """Episodes read back from this node's Events after a restart (exporter/core/
        restore.py), before any event reaches the correlator: the last live one of each
        Service comes back open, or closed and waiting for its recovery against its restored
        slow threshold (from `now`: this agent cannot say what latency did while none was
        looking); the finished ones return to the recent list; new ids continue after every
        id read back. Nothing is announced: their Events are written already. Returns the
        live ones (their Services are kept until they end)."""
        s = self.settings
        plan = plan_restore(records, now, s.recovery_max + s.settle)
        for ref, seq in plan.seq.items():
            self._seq_floor[ref] = max(self._seq_floor.get(ref, 0), seq)
            if (view := self.services.get(ref)) is not None:
                view.seq = max(view.seq, seq)
        live: list[Episode] = []
        for record in plan.live:
            view = self.services.get(record.service)
            if view is None:
                view = self.services[record.service] = self._new_view(record.service)
                self._index.stale = True
            if view.episode is not None:  # one began since the restart: it ended this one
                plan.interrupted[record.id] = view.episode.id
                plan.finished.append(record)
                continue
            closed = record.closed_at
            if (
                record.status is Status.RECOVERING
                and closed is not None
                and closed + s.recovery_max - now < s.recovery_window
            ):
                # Too little of --recovery-max left to confirm a recovery: judging it now
                # would call it "not recovered" on nothing measured. Its story ends here.
                plan.interrupted[record.id] = RESTART_INTERRUPTION
                plan.finished.append(record)
                continue
            episode = view.episode = restored_episode(record, s.confidence, now)
            if episode.status is Status.RECOVERING:
                assert record.source is not None and record.threshold is not None
                since = max(now, episode.closed_at or now)
                view.latency.timeline(record.source)  # (none yet: nothing recorded since)
                view.latency.start_recovery(record.source, since, record.threshold)
            live.append(episode)
        finished = [
            restored_episode(r, s.confidence, now, interrupted_by=plan.interrupted.get(r.id, ""))
            for r in plan.finished
        ]
        self.recent[:0] = finished  # older than anything this agent finished itself
        del self.recent[: -s.max_recent]
        return live

    # -- views ---------------------------------------------------------------------------

    def open_episodes(self) -> list[Episode]:
        """Open episodes, oldest first."""
        held = (v.episode for v in self.services.values() if v.episode is not None)
        return sorted((e for e in held if e.open), key=lambda e: (e.opened_at, e.id))

    def closed_episodes(self) -> list[Episode]:
        """Closed episodes still recovering and the last finished ones, newest first."""
        held = [v.episode for v in self.services.values() if v.episode is not None]
        closed = [e for e in held if not e.open] + self.recent
        return sorted(closed, key=lambda e: (e.closed_at or 0.0, e.id), reverse=True)

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "node": self.node,
            "generated_at": iso(now),
            "settings": self.settings.as_json(),
            "open": [e.as_json() for e in self.open_episodes()],
            "recent": [e.as_json() for e in self.closed_episodes()],
        }
