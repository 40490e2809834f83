"""The HTML report of `tailwatch demo` and `tailwatch episodes --html` (docs/demo.md,
*The picture*): one SVG timeline per Service, drawn from data alone.

Each timeline shows, on one time axis: the p50 and p99 of the Service's latency over time
(when the caller has them: the demo reads the in-process agent; `tailwatch episodes` has
only the merged episode records, so it draws no lines), every episode as a band from its
opening to its close with its cause written on it, the lifecycle events the agent tied to
the episode as markers (a shape and a letter per kind, so they read without colour), and
the moment latency really recovered. Beside it, each episode's headline numbers as text.

Pure and self-contained on purpose: the page is one file with inline SVG and CSS, no
script, no font, no image and no address outside it, so it opens from disk or a CI
artifact store, and renders the same offline. Nothing here is imported by the agent.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from exporter.kube.events import parse_time

# -- the layout (tests compute the expected positions from these) --------------------------

#: The SVG's size and its plot area, in CSS pixels.
WIDTH = 760
HEIGHT = 314
PLOT_LEFT = 64
PLOT_RIGHT = WIDTH - 30  # room for the lines' labels at their ends
PLOT_TOP = 58
PLOT_BOTTOM = 258
PLOT_WIDTH = PLOT_RIGHT - PLOT_LEFT
PLOT_HEIGHT = PLOT_BOTTOM - PLOT_TOP
#: The event markers sit in lanes above the plot, the first just above it: a marker too
#: close to the one before it in a lane takes the next lane (its x stays its moment's).
MARKER_LANES = 3
MARKER_LANE_HEIGHT = 17
MARKER_SIZE = 7.0

#: Event kinds drawn as markers: (legend name, letter, shape, colour). The letter and the
#: shape say the kind without colour.
MARKER_KINDS: dict[str, tuple[str, str, str, str]] = {
    "restart": ("container restart", "R", "circle", "#d9480f"),
    "oom_kill": ("OOM kill", "O", "square", "#c92a2a"),
    "eviction": ("eviction", "E", "square", "#862e9c"),
    "rollout": ("rollout", "U", "circle", "#1864ab"),
    "ready": ("became ready", "+", "circle", "#2b8a3e"),
    "not_ready": ("became not ready", "-", "circle", "#e67700"),
    "node": ("node condition or taint", "N", "diamond", "#5f3dc4"),
    "endpoint": ("pod scheduled, moved or removed", "", "dot", "#868e96"),
}

#: Agent events (source, event) as marker kinds; anything else is an `endpoint` marker.
EVENT_KINDS: dict[tuple[str, str], str] = {
    ("pod", "container_restart"): "restart",
    ("pod", "oom_kill"): "oom_kill",
    ("kernel", "oom_kill"): "oom_kill",
    ("pod", "evicted"): "eviction",
    ("pod", "ready"): "ready",
    ("endpoint", "ready"): "ready",
    ("pod", "not_ready"): "not_ready",
    ("endpoint", "not_ready"): "not_ready",
}

CAUSE_COLOURS: dict[str, str] = {
    "rollout": "#a5d8ff",
    "restart": "#ffc9c9",
    "reschedule": "#d0bfff",
    "resource_pressure": "#ffd8a8",
    "node": "#eebefa",
    "scale": "#b2f2bb",
}
DEFAULT_BAND = "#dee2e6"
P50_COLOUR = "#1c7ed6"
P99_COLOUR = "#e03131"


# -- the data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """The latency of a Service over one stretch of time ending at `at` (wall seconds)."""

    at: float
    p50: float | None  # seconds
    p99: float | None
    samples: int = 0


@dataclass(frozen=True)
class Band:
    """One episode: shaded from its opening to its close (to the end of the axis while it
    is open), and its recovery."""

    opened: float
    closed: float | None
    cause: str
    status: str
    label: str  # its id
    recovered_at: float | None = None


@dataclass(frozen=True)
class Marker:
    """One lifecycle event at `at`: its kind (a key of MARKER_KINDS) and what it was."""

    at: float
    kind: str
    text: str


@dataclass
class ServiceTimeline:
    name: str  # namespace/service
    points: list[Point] = field(default_factory=list)
    bands: list[Band] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    headlines: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TimeAxis:
    """How a wall time is written on the axis: `offset` as t+N seconds from `origin`,
    multiplied by `scale` (the demo's speed: scenario seconds); `utc` as a UTC clock."""

    origin: float
    scale: float = 1.0
    mode: str = "utc"

    def label(self, at: float) -> str:
        if self.mode == "offset":
            return f"t+{(at - self.origin) * self.scale:.0f}s"
        return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S")

    def duration(self, seconds: float) -> str:
        return (
            f"{seconds * self.scale:.0f}s"
            if seconds * self.scale >= 10
            else (f"{seconds * self.scale:.1f}s")
        )


@dataclass
class Report:
    title: str
    subtitle: str
    axis: TimeAxis
    start: float  # wall seconds: the left and right edges of every timeline
    end: float
    services: list[ServiceTimeline] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    latency_note: str = ""  # what the lines are (or why there are none)


def plot_x(start: float, end: float, at: float) -> float:
    """Where a moment is drawn: its share of [start, end] across the plot, clipped to it."""
    span = max(end - start, 1e-9)
    share = min(1.0, max(0.0, (at - start) / span))
    return PLOT_LEFT + share * PLOT_WIDTH


# -- from episode documents ----------------------------------------------------------------


def marker_kind(source: str, event: str) -> str:
    if source == "node":
        return "node"
    return EVENT_KINDS.get((source, event), "endpoint")


def markers_of(events: Iterable[Mapping[str, Any]]) -> list[Marker]:
    """Markers of an episode's `events` (/api/v1/episodes), one per kind, pod and moment:
    a pod's readiness comes from the pod and from its endpoint at once."""
    out: dict[tuple[str, str, float], Marker] = {}
    for e in events:
        at = parse_time(e.get("at"))
        if at is None:
            continue
        source, event = str(e.get("source") or ""), str(e.get("event") or "")
        if source == "latency":
            continue  # the tail spike itself: the band is its drawing
        kind = marker_kind(source, event)
        subject = str(e.get("pod") or e.get("node") or "")
        key = (kind, subject, round(at, 1))
        if key in out:
            continue
        words = [event.replace("_", " "), subject]
        if e.get("container"):
            words.append(f"container {e['container']}")
        if e.get("reason"):
            words.append(str(e["reason"]))
        if source == "node" or e.get("node"):
            words.append(f"on {e.get('node') or subject}")
        out[key] = Marker(at, kind, " ".join(w for w in words if w))
    return sorted(out.values(), key=lambda m: m.at)


def _ms(seconds: object) -> str:
    return f"{seconds * 1000:.1f} ms" if isinstance(seconds, int | float) else "?"


def headline(episode: Mapping[str, Any], axis: TimeAxis) -> str:
    """`shop/db/1 restart: p99 12.0 ms → 48.1 ms (4.0x), recovered 9s after the close`."""
    latency = episode.get("latency") or {}
    before = (latency.get("baseline") or {}).get("p99")
    during = (latency.get("during") or {}).get("p99")
    ratio = (latency.get("ratios") or {}).get("p99")
    text = f"{episode.get('id', '?')} {episode.get('cause', '?')}: "
    if before is not None or during is not None:
        text += f"p99 {_ms(before)} → {_ms(during)}"
        text += f" ({ratio:.1f}x)" if isinstance(ratio, int | float) else ""
    else:
        text += "no latency measured"
    if episode.get("impact"):
        text += f", impact {episode['impact']}"
    return (
        text
        + ", "
        + recovery_words(str(episode.get("status") or ""), episode.get("recovery_seconds"), axis)
    )


def recovery_words(status: str, seconds: object, axis: TimeAxis) -> str:
    if status == "recovered" and isinstance(seconds, int | float):
        if seconds <= 0:  # latency was back within tolerance before the episode closed
            return "recovered by the close"
        return f"recovered {axis.duration(seconds)} after the close"
    return {
        "open": "still open",
        "recovering": "recovering",
        "not_recovered": "not recovered",
        "no_baseline": "no baseline to judge recovery",
        "interrupted": "interrupted",
    }.get(status, status.replace("_", " "))


def timelines_of_episodes(
    doc: Mapping[str, Any],
    services: Sequence[str],
    axis: TimeAxis,
    points: Mapping[str, Sequence[Point]] | None = None,
) -> list[ServiceTimeline]:
    """One timeline per Service of `services` (namespace/name, in that order), from an
    agent's /api/v1/episodes document, with the latency `points` per Service if known."""
    by_name = {name: ServiceTimeline(name, list((points or {}).get(name, ()))) for name in services}
    episodes = [*doc.get("recent", []), *doc.get("open", [])]
    for e in sorted(episodes, key=lambda e: str(e.get("opened_at") or "")):
        name = f"{e.get('namespace')}/{e.get('service')}"
        opened = parse_time(e.get("opened_at"))
        timeline = by_name.get(name)
        if timeline is None or opened is None:
            continue
        timeline.bands.append(
            Band(
                opened,
                parse_time(e.get("closed_at")),
                str(e.get("cause") or "?"),
                str(e.get("status") or "?"),
                str(e.get("id") or ""),
                parse_time(e.get("recovered_at")),
            )
        )
        timeline.markers.extend(markers_of(e.get("events") or []))
        timeline.headlines.append(headline(e, axis))
    for rollout in doc.get("rollouts", []):
        at = parse_time(rollout.get("started_at"))
        workload = f"{rollout.get('namespace')}/{rollout.get('workload')}"
        took = rollout.get("duration_seconds")
        text = f"rollout of {workload} started ({rollout.get('state')}" + (
            f" in {axis.duration(took)})" if isinstance(took, int | float) else ")"
        )
        for name in rollout.get("services") or []:
            if at is not None and name in by_name:
                by_name[name].markers.append(Marker(at, "rollout", text))
    for timeline in by_name.values():
        timeline.markers.sort(key=lambda m: m.at)
    return list(by_name.values())


# -- drawing -------------------------------------------------------------------------------


def _nice_step(span: float, target: int, steps: Sequence[float]) -> float:
    for step in steps:
        if span / step <= target:
            return step
    return steps[-1] * math.ceil(span / (steps[-1] * target))


TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)


def time_ticks(start: float, end: float, axis: TimeAxis, target: int = 8) -> list[float]:
    """Wall times of the ticks: round numbers of the axis' own unit (scenario seconds in
    the demo), about `target` of them."""
    span = (end - start) * axis.scale
    step = _nice_step(span, target, TIME_STEPS) / axis.scale
    base = axis.origin if axis.mode == "offset" else 0.0
    first = base + math.ceil((start - base) / step - 1e-9) * step
    out = []
    t = first
    while t <= end + 1e-9:
        out.append(t)
        t += step
    return out


#: A log latency axis when the largest value shown is this many times the smallest: a
#: stall of seconds would flatten a 10 ms p50 into the axis on a linear one.
LOG_RANGE = 30.0


@dataclass(frozen=True)
class LatencyScale:
    """The latency axis: linear from 0, or log from `bottom`; values in seconds."""

    top: float
    ticks: list[float]
    bottom: float = 0.0
    log: bool = False

    def y(self, seconds: float) -> float:
        if self.log:
            low, high = math.log10(self.bottom), math.log10(self.top)
            share = (math.log10(max(seconds, self.bottom)) - low) / (high - low)
        else:
            share = seconds / self.top
        return PLOT_BOTTOM - min(1.0, max(0.0, share)) * PLOT_HEIGHT


def latency_scale(values: Sequence[float]) -> LatencyScale:
    positive = [v for v in values if v > 0]
    if not positive or max(positive) / min(positive) <= LOG_RANGE:
        top, ticks = latency_ticks(max(values) * 1.05 if values else 0.1)
        return LatencyScale(top, ticks)
    # Decades of ms with 1-2-5 steps, from below the smallest to above the largest.
    low = math.floor(math.log10(min(positive) * 1000))
    high = math.ceil(math.log10(max(positive) * 1000))
    ticks = [m * 10.0**k / 1000 for k in range(low, high + 1) for m in (1, 2, 5)]
    bottom = max(t for t in ticks if t <= min(positive))
    top = min(t for t in ticks if t >= max(positive))
    return LatencyScale(top, [t for t in ticks if bottom <= t <= top], bottom, log=True)


def latency_ticks(top: float) -> tuple[float, list[float]]:
    """The axis' top and its ticks, in seconds: a round number of ms per step."""
    ms = max(top * 1000, 1.0)
    raw = ms / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = [i * step / 1000 for i in range(math.ceil(ms / step) + 1)]
    return ticks[-1], ticks


def _attrs(values: Mapping[str, object]) -> str:
    """`class_="x", data_at=1` as ` class="x" data-at="1"`: a trailing _ is dropped (a
    Python keyword), other underscores are hyphens; a float is written to 0.1 px."""
    out = []
    for key, value in values.items():
        name = key.rstrip("_").replace("_", "-")
        text = f"{value:.1f}" if isinstance(value, float) else str(value)
        out.append(f' {name}="{html.escape(text)}"')
    return "".join(out)


def tag(name: str, body: str | None = None, **attrs: object) -> str:
    """An element; `body` is markup (escape text first), None makes it empty."""
    if body is None:
        return f"<{name}{_attrs(attrs)}/>"
    return f"<{name}{_attrs(attrs)}>{body}</{name}>"


def marker_shape(kind: str, x: float, y: float, size: float = 8.0) -> str:
    """A marker's shape, with its letter on it: each kind reads without colour."""
    _, letter, shape, colour = MARKER_KINDS.get(kind, MARKER_KINDS["endpoint"])
    if shape == "dot":
        return tag("circle", cx=x, cy=y, r=3.5, fill=colour)
    if shape == "square":
        body = tag("rect", x=x - size, y=y - size, width=2 * size, height=2 * size, fill=colour)
    elif shape == "diamond":
        r = size + 1
        d = f"M{x:.1f} {y - r:.1f}L{x + r:.1f} {y:.1f}L{x:.1f} {y + r:.1f}L{x - r:.1f} {y:.1f}Z"
        body = tag("path", d=d, fill=colour)
    else:
        body = tag("circle", cx=x, cy=y, r=size, fill=colour)
    return body + tag("text", html.escape(letter), x=x, y=y + 3.5, class_="glyph")


def _path(points: Sequence[tuple[float, float | None]]) -> str:
    """An SVG path through the points, broken where a value is missing."""
    out: list[str] = []
    pen_down = False
    for x, y in points:
        if y is None:
            pen_down = False
            continue
        out.append(f"{'L' if pen_down else 'M'}{x:.1f} {y:.1f}")
        pen_down = True
    return "".join(out)


def _describe(timeline: ServiceTimeline) -> str:
    """The SVG's <desc>: what it shows, in words."""
    n = len(timeline.bands)
    kinds = sorted({MARKER_KINDS[m.kind][0] for m in timeline.markers if m.kind in MARKER_KINDS})
    text = f"{timeline.name}: {n} episode{'s' if n != 1 else ''}"
    if timeline.headlines:
        text += ": " + "; ".join(timeline.headlines)
    text += f". Events: {', '.join(kinds)}." if kinds else "."
    if timeline.points:
        return text + " Lines: p50 and p99 latency in ms over time."
    return text + " No latency lines."


def render_timeline(timeline: ServiceTimeline, report: Report) -> str:
    """One Service's SVG: bands under the grid, lines over it, markers on top."""
    start, end, axis = report.start, report.end, report.axis

    def x(at: float) -> float:
        return plot_x(start, end, at)

    shown = [p for p in timeline.points if start <= p.at <= end]
    values = [v for p in shown for v in (p.p50, p.p99) if v is not None]
    scale = latency_scale(values)
    y = scale.y

    ident = _id(timeline.name)
    parts = [
        tag("title", html.escape(f"{timeline.name}: latency, episodes and lifecycle events"),
            id=f"t-{ident}"),
        tag("desc", html.escape(_describe(timeline)), id=f"d-{ident}"),
        tag("rect", class_="plot", x=PLOT_LEFT, y=PLOT_TOP, width=PLOT_WIDTH, height=PLOT_HEIGHT),
    ]  # fmt: skip
    for band in timeline.bands:
        left, right = x(band.opened), x(band.closed if band.closed is not None else end)
        closed = f", closed {axis.label(band.closed)}" if band.closed is not None else ", open"
        tip = f"{band.label}: {band.cause}, {band.status}; opened {axis.label(band.opened)}"
        parts.append(
            tag("rect", tag("title", html.escape(tip + closed)), class_="band", x=left,
                y=PLOT_TOP, width=max(right - left, 2.0), height=PLOT_HEIGHT,
                fill=CAUSE_COLOURS.get(band.cause, DEFAULT_BAND), data_cause=band.cause,
                data_episode=band.label)
        )  # fmt: skip
        if band.closed is not None and band.recovered_at is not None:
            rec = x(band.recovered_at)
            if rec > right:
                parts.append(
                    tag("rect", class_="recovering", x=right, y=PLOT_TOP, width=rec - right,
                        height=PLOT_HEIGHT)
                )  # fmt: skip
    for tick in scale.ticks:
        ty = y(tick)
        parts.append(tag("line", class_="grid", x1=PLOT_LEFT, x2=PLOT_RIGHT, y1=ty, y2=ty))
        if shown:
            parts.append(
                tag("text", _tick_ms(tick), class_="tick", x=PLOT_LEFT - 6, y=ty + 4,
                    text_anchor="end")
            )  # fmt: skip
    for tick in time_ticks(start, end, axis):
        tx = x(tick)
        parts.append(
            tag("line", class_="tickmark", x1=tx, x2=tx, y1=PLOT_BOTTOM, y2=PLOT_BOTTOM + 5)
        )
        parts.append(
            tag("text", html.escape(axis.label(tick)), class_="tick", x=tx, y=PLOT_BOTTOM + 18,
                text_anchor="middle")
        )  # fmt: skip
    middle = PLOT_LEFT + PLOT_WIDTH / 2
    parts.append(
        tag("text", "scenario time" if axis.mode == "offset" else "time (UTC)", class_="axis",
            x=middle, y=HEIGHT - 12, text_anchor="middle")
    )  # fmt: skip
    if shown:
        mid_y = PLOT_TOP + PLOT_HEIGHT / 2
        parts.append(
            tag("text", "latency (ms, log scale)" if scale.log else "latency (ms)",
                class_="axis", x=14, y=mid_y, text_anchor="middle",
                transform=f"rotate(-90 14 {mid_y:.1f})")
        )  # fmt: skip
        parts.extend(_lines(timeline, start, end, x, y))
    else:
        note = html.escape(report.latency_note or "no latency over time")
        parts.append(
            tag("text", note, class_="nolines", x=middle, y=PLOT_BOTTOM - 12,
                text_anchor="middle")
        )  # fmt: skip
    for band in timeline.bands:
        parts.append(tag("text", html.escape(band.cause), class_="cause", x=x(band.opened) + 3,
                         y=PLOT_TOP + 14))  # fmt: skip
        if band.recovered_at is not None and band.status == "recovered":
            rx = x(band.recovered_at)
            when = f"{band.label} recovered at {axis.label(band.recovered_at)}"
            parts.append(
                tag("g", tag("line", x1=rx, x2=rx, y1=PLOT_TOP, y2=PLOT_BOTTOM)
                    + tag("text", "recovered", x=rx + 3, y=PLOT_TOP + 28)
                    + tag("title", html.escape(when)),
                    class_="recovery", data_at=f"{band.recovered_at:.3f}", data_x=rx)
            )  # fmt: skip
        elif band.status == "not_recovered" and band.closed is not None:
            parts.append(tag("text", "not recovered", class_="notrecovered",
                             x=x(band.closed) + 3, y=PLOT_TOP + 28))  # fmt: skip
    parts.extend(_markers(timeline, start, end, x, axis))
    return tag(
        "svg", "\n".join(parts), class_="timeline", width=WIDTH, height=HEIGHT,
        viewBox=f"0 0 {WIDTH} {HEIGHT}", role="img", data_service=timeline.name,
        aria_labelledby=f"t-{ident} d-{ident}",
    )  # fmt: skip


def _lines(
    timeline: ServiceTimeline,
    start: float,
    end: float,
    x: Callable[[float], float],
    y: Callable[[float], float],
) -> list[str]:
    """The p50 (dashed) and p99 (thick) lines, each labelled at its end."""
    out = []
    label_y: list[float] = []
    for name, colour in (("p50", P50_COLOUR), ("p99", P99_COLOUR)):
        coords: list[tuple[float, float | None]] = []
        for p in timeline.points:
            value = p.p50 if name == "p50" else p.p99
            if start <= p.at <= end:
                coords.append((x(p.at), None if value is None else y(value)))
        d = _path(coords)
        if not d:
            continue
        out.append(
            tag("path", tag("title", f"{name} latency"), class_=f"line {name}", d=d,
                stroke=colour)
        )  # fmt: skip
        lx, ly = next((cx, cy) for cx, cy in reversed(coords) if cy is not None)
        if label_y:  # p99's label above p50's, never on top of it
            ly = min(ly, label_y[0] - 11)
        label_y.append(ly)
        out.append(
            tag("text", name, class_=f"linelabel {name}", x=lx + 3, y=ly + 4,
                fill=colour)
        )  # fmt: skip
    return out


def _markers(
    timeline: ServiceTimeline, start: float, end: float, x: Callable[[float], float],
    axis: TimeAxis,
) -> list[str]:  # fmt: skip
    """Each event in the first lane where it does not cover the one before it."""
    out = []
    lanes = [-math.inf] * MARKER_LANES  # the x of the last marker in each lane
    for m in timeline.markers:
        if not start <= m.at <= end:
            continue
        mx = x(m.at)
        free = [i for i, last in enumerate(lanes) if mx - last >= 2 * MARKER_SIZE + 2]
        lane = free[0] if free else min(range(MARKER_LANES), key=lambda i: lanes[i])
        lanes[lane] = mx
        my = marker_y(lane)
        body = (
            tag("line", class_="markerline", x1=mx, x2=mx, y1=my + MARKER_SIZE, y2=PLOT_BOTTOM)
            + marker_shape(m.kind, mx, my, MARKER_SIZE)
            + tag("title", html.escape(f"{axis.label(m.at)}: {m.text}"))
        )
        out.append(
            tag("g", body, class_="marker", data_kind=m.kind, data_at=f"{m.at:.3f}", data_x=mx)
        )
    return out


def marker_y(lane: int) -> float:
    """The centre of a marker lane: lane 0 just above the plot."""
    return PLOT_TOP - 12 - lane * MARKER_LANE_HEIGHT


def _tick_ms(seconds: float) -> str:
    ms = round(seconds * 1000, 6)
    return f"{ms:g}"


def _id(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


def legend() -> str:
    """What every colour, line and shape means, in words."""
    items = [
        f'<li><span class="swatch line" style="border-color:{P99_COLOUR}"></span> p99 (thick)</li>',
        f'<li><span class="swatch line dashed" style="border-color:{P50_COLOUR}"></span> p50 '
        "(dashed)</li>",
        '<li><span class="swatch recovered"></span> recovered: latency back within tolerance</li>',
    ]
    items += [
        f'<li><span class="swatch" style="background:{colour}"></span> episode: '
        f"{html.escape(cause)}</li>"
        for cause, colour in CAUSE_COLOURS.items()
    ]
    items += [
        "<li>"
        + tag("svg", marker_shape(kind, 11.0, 11.0, 7.0), width=22, height=22,
              viewBox="0 0 22 22", aria_hidden="true")
        + f" {html.escape(name)}</li>"
        for kind, (name, _, _, _) in MARKER_KINDS.items()
    ]  # fmt: skip
    return '<ul class="legend">' + "".join(items) + "</ul>"


STYLE = """
body { font: 14px/1.4 "DejaVu Sans", "Liberation Sans", Arial, sans-serif; color: #212529;
       margin: 16px 24px; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 0 0 6px; }
p.sub, p.note { color: #495057; margin: 2px 0 8px; }
.legend { list-style: none; padding: 0; margin: 8px 0 14px; display: flex; flex-wrap: wrap;
          gap: 4px 16px; font-size: 12px; }
.legend li { display: flex; align-items: center; gap: 4px; }
.swatch { display: inline-block; width: 16px; height: 12px; border: 1px solid #adb5bd; }
.swatch.line { height: 0; border-width: 3px 0 0; border-style: solid; }
.swatch.line.dashed { border-width: 2px 0 0; border-style: dashed; }
.swatch.recovered { height: 12px; width: 0; border: 0; border-left: 2px dashed #2b8a3e; }
section.service { display: flex; flex-wrap: wrap; gap: 12px 20px; align-items: flex-start;
                  margin: 0 0 18px; padding-top: 10px; border-top: 1px solid #dee2e6; }
section.service .numbers { flex: 1 1 260px; font-size: 13px; }
section.service .numbers ul { padding-left: 18px; margin: 4px 0; }
svg.timeline { background: #fff; }
svg.timeline .plot { fill: #fff; stroke: #adb5bd; }
svg.timeline .band { opacity: 0.75; }
svg.timeline .recovering { fill: #ebfbee; }
svg.timeline .grid { stroke: #e9ecef; }
svg.timeline .tickmark { stroke: #495057; }
svg.timeline text { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; }
svg.timeline .tick { font-size: 11px; fill: #495057; }
svg.timeline .axis { font-size: 12px; fill: #343a40; }
svg.timeline .cause { font-size: 12px; font-weight: bold; fill: #212529;
                      paint-order: stroke; stroke: #fff; stroke-width: 3px; }
svg.timeline .line { fill: none; stroke-linejoin: round; }
svg.timeline .line.p99 { stroke-width: 2.5; }
svg.timeline .line.p50 { stroke-width: 1.5; stroke-dasharray: 5 3; }
svg.timeline .linelabel { font-size: 11px; font-weight: bold; }
svg.timeline .recovery line { stroke: #2b8a3e; stroke-width: 2; stroke-dasharray: 4 3; }
svg.timeline .recovery text, svg.timeline .notrecovered { font-size: 11px; fill: #2b8a3e;
    paint-order: stroke; stroke: #fff; stroke-width: 3px; }
svg.timeline .notrecovered { fill: #c92a2a; }
svg.timeline .markerline { stroke: #868e96; stroke-width: 1; stroke-dasharray: 2 3; }
.glyph { font-size: 10px; font-weight: bold; fill: #fff; text-anchor: middle; }
svg.timeline .nolines { font-size: 12px; fill: #868e96; }
"""


def render_html(report: Report) -> str:
    """The whole page: a title, the legend, then per Service its timeline and numbers."""
    sections = []
    for timeline in report.services:
        numbers = (
            "<ul>" + "".join(f"<li>{html.escape(h)}</li>" for h in timeline.headlines) + "</ul>"
            if timeline.headlines
            else "<p>No episode.</p>"
        )
        sections.append(
            f'<section class="service" id="{_id(timeline.name)}"><div><h2>{html.escape(timeline.name)}</h2>'  # noqa: E501
            f"{render_timeline(timeline, report)}</div>"
            f'<div class="numbers"><h2>Episodes</h2>{numbers}</div></section>'
        )
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in report.notes)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(report.title)}</title><style>{STYLE}</style></head><body>\n"
        f"<h1>{html.escape(report.title)}</h1>"
        f'<p class="sub">{html.escape(report.subtitle)}</p>{notes}'
        + legend()
        + "\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
