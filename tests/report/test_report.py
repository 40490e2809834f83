"""The HTML report (exporter/report.py) as a user sees it: rendered by a real headless
Chromium, one timeline per Service with its episode bands, its event markers at their
moments, its recovery, and pixels drawn in the plot."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from exporter.core.merge import read_agent
from exporter.report import (
    PLOT_BOTTOM,
    PLOT_HEIGHT,
    PLOT_LEFT,
    PLOT_TOP,
    PLOT_WIDTH,
    Band,
    Marker,
    Point,
    Report,
    ServiceTimeline,
    TimeAxis,
    latency_scale,
    recovery_words,
    render_html,
    time_ticks,
    timelines_of_episodes,
)
from tests.chromium import measured, read_png, screenshot

T0 = 1_800_000_000.0  # wall seconds where the axis starts
SPAN = 100.0
SPEED = 4.0


def expected_x(at: float) -> float:
    return PLOT_LEFT + (at - T0) / SPAN * PLOT_WIDTH


def example() -> Report:
    points = [Point(T0 + i, 0.012, 0.080 if 30 <= i < 40 else 0.030, 20) for i in range(0, 100, 2)]
    checkout = ServiceTimeline(
        "shop/checkout",
        points,
        [
            Band(T0 + 30, T0 + 40, "rollout", "recovered", "shop/checkout/1", T0 + 45),
            Band(T0 + 70, T0 + 78, "restart", "not_recovered", "shop/checkout/2"),
        ],
        [
            Marker(T0 + 30, "rollout", "rollout of shop/checkout started"),
            Marker(T0 + 34, "ready", "ready checkout-b"),
            Marker(T0 + 70, "oom_kill", "oom kill db-0 container db"),
            Marker(T0 + 71, "restart", "container restart db-0 OOMKilled"),
            Marker(T0 + 72, "node", "memory pressure on node-1"),
        ],
        ["shop/checkout/1 rollout: p99 30.0 ms → 80.0 ms (2.7x), recovered 20s after"],
    )
    cart = ServiceTimeline("shop/cart", points)
    return Report(
        "tailwatch demo", "test", TimeAxis(T0, SPEED, "offset"), T0, T0 + SPAN, [checkout, cart]
    )


def test_chromium_draws_each_band_marker_and_recovery_at_its_moment(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(example()))
    checkout, cart = measured(page, tmp_path)
    assert (checkout["service"], cart["service"]) == ("shop/checkout", "shop/cart")
    assert len(checkout["bands"]) == 2 and cart["bands"] == []
    for (left, right), (opened, closed) in zip(
        checkout["bands"], [(30, 40), (70, 78)], strict=True
    ):
        assert left == pytest.approx(expected_x(T0 + opened), abs=1.0)
        assert right == pytest.approx(expected_x(T0 + closed), abs=1.0)
    kinds = [kind for kind, _ in checkout["markers"]]
    assert kinds == ["rollout", "ready", "oom_kill", "restart", "node"]
    for (_, x), at in zip(checkout["markers"], [30, 34, 70, 71, 72], strict=True):
        assert x == pytest.approx(expected_x(T0 + at), abs=1.0)
    # The recovery is marked where latency recovered; the one that did not has no mark.
    assert checkout["recoveries"] == [pytest.approx(expected_x(T0 + 45), abs=1.0)]
    # Both lines drawn across the plot, in both Services.
    assert len(checkout["lines"]) == len(cart["lines"]) == 2
    assert all(length > PLOT_WIDTH * 0.9 for length in checkout["lines"] + cart["lines"])
    # Accessible: each SVG says what it is and what it shows, in words.
    assert checkout["title"].startswith("shop/checkout: latency, episodes")
    assert "2 episodes" in checkout["desc"] and "OOM kill" in checkout["desc"]
    assert "0 episodes" in cart["desc"]


def test_the_screenshot_has_the_drawing_in_the_plot(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(example()))
    where = measured(page, tmp_path)[0]
    image = read_png(screenshot(page, tmp_path / "shot.png", 1280, 900))
    left, top = round(where["left"]), round(where["top"])

    def drawn(x: float, y: float) -> bool:
        return image.pixel(left + round(x), top + round(y)) != (255, 255, 255)

    # The rollout band is shaded top to bottom, a steady stretch of plot is not.
    band_x = (expected_x(T0 + 31) + expected_x(T0 + 39)) / 2
    assert all(drawn(band_x, y) for y in range(PLOT_TOP + 30, PLOT_BOTTOM - 30, 10))
    blank_x = expected_x(T0 + 55)
    blank = [y for y in range(PLOT_TOP + 2, PLOT_BOTTOM - 2) if not drawn(blank_x, y)]
    assert len(blank) > (PLOT_BOTTOM - PLOT_TOP) * 0.5
    # The lines: in each column of the steady stretch, something drawn besides the grid.
    inked = sum(
        drawn(x, y)
        for x in range(round(expected_x(T0 + 50)), round(expected_x(T0 + 65)))
        for y in range(PLOT_TOP + 2, PLOT_BOTTOM - 2)
    )
    assert inked > 0.03 * (PLOT_BOTTOM - PLOT_TOP) * (expected_x(T0 + 65) - expected_x(T0 + 50))
    # The markers' lane above the plot holds the rollout marker's colour (a blue).
    r, g, b = image.pixel(left + round(expected_x(T0 + 30)), top + PLOT_TOP - 12)
    assert b > 150 and r < 100, (r, g, b)


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"script", "link", "img", "iframe", "object"}:
            self.found.append(tag)
        self.found += [f"{tag} {k}" for k, v in attrs if k in {"src", "href"} and v]


def test_the_page_is_self_contained() -> None:
    text = render_html(example())
    parser = Links()
    parser.feed(text)
    assert parser.found == []
    assert "http" not in text and "url(" not in text and "@import" not in text


def test_the_time_axis_ticks_are_round_scenario_seconds() -> None:
    axis = TimeAxis(T0, SPEED, "offset")
    ticks = time_ticks(T0, T0 + SPAN, axis)
    assert [axis.label(t) for t in ticks] == [f"t+{n}s" for n in range(0, 401, 60)]


def agent_doc() -> dict[str, Any]:
    """An agent's /api/v1/episodes with one restart episode of shop/db."""

    def at(seconds: float) -> str:
        from exporter.core.episodes import iso

        text = iso(T0 + seconds)
        assert text is not None
        return text

    return {
        "node": "node-1",
        "open": [],
        "rollouts": [
            {"namespace": "shop", "workload": "db", "services": ["shop/db"], "started_at": at(19),
             "state": "finished", "duration_seconds": 2.0}
        ],
        "recent": [
            {
                "id": "shop/db/1", "namespace": "shop", "service": "db", "cause": "restart",
                "status": "recovered", "opened_at": at(20), "closed_at": at(30),
                "recovered_at": at(33), "recovery_seconds": 3.0, "impact": "high",
                "latency": {"baseline": {"p99": 0.01}, "during": {"p99": 0.05},
                            "ratios": {"p99": 5.0}},
                "events": [
                    {"at": at(20), "source": "pod", "event": "oom_kill", "pod": "db-0",
                     "container": "db", "reason": "", "node": "node-1"},
                    {"at": at(21), "source": "pod", "event": "container_restart",
                     "pod": "db-0", "container": "db", "reason": "OOMKilled", "node": "node-1"},
                    {"at": at(25), "source": "pod", "event": "ready", "pod": "db-0",
                     "container": "", "reason": "", "node": "node-1"},
                    {"at": at(25), "source": "endpoint", "event": "ready", "pod": "db-0",
                     "container": "", "reason": "", "node": "node-1"},
                ],
            }
        ],
    }  # fmt: skip


def test_an_agents_episodes_become_bands_markers_and_numbers() -> None:
    axis = TimeAxis(T0, SPEED, "offset")
    db, cart = timelines_of_episodes(agent_doc(), ["shop/db", "shop/cart"], axis)
    assert [(b.cause, b.opened - T0, b.recovered_at) for b in db.bands] == [
        ("restart", 20.0, T0 + 33)
    ]
    # The rollout the agent tracked is on the Services it names; the pod's and its
    # endpoint's readiness at one moment are one marker.
    assert [m.kind for m in db.markers] == ["rollout", "oom_kill", "restart", "ready"]
    assert db.markers[0].text == "rollout of shop/db started (finished in 8.0s)"
    assert db.headlines == [
        "shop/db/1 restart: p99 10.0 ms → 50.0 ms (5.0x), impact high, recovered 12s after "
        "the close"
    ]
    assert (cart.bands, cart.markers) == ([], [])


def test_episodes_html_draws_the_merged_records_without_latency_lines(tmp_path: Path) -> None:
    from exporter.cluster import (
        AgentPod,
        AgentResult,
        EpisodesOptions,
        Gathered,
        html_page,
        records_of,
    )

    doc = agent_doc()
    pod = AgentPod("tailwatch", "tailwatch-a", "node-1", 9808, "http", "Running", True)
    result = AgentResult(pod, read_agent(doc, node="node-1"))
    result.events = [("shop", "db", doc["recent"][0]["events"])]
    gathered = Gathered([result], at=T0 + 60)
    records = records_of(gathered, EpisodesOptions())
    page = tmp_path / "episodes.html"
    page.write_text(html_page(gathered, records))
    (db,) = measured(page, tmp_path)
    assert db["service"] == "shop/db"
    assert len(db["bands"]) == 1 and db["lines"] == []
    # The records' agents' events: the rollout is the agent's rollouts', not an event.
    assert [kind for kind, _ in db["markers"]] == ["oom_kill", "restart", "ready"]
    assert len(db["recoveries"]) == 1
    assert "the episode records do not hold latency" in page.read_text()


def test_a_stall_of_seconds_puts_latency_on_a_log_axis() -> None:
    """A 4 s stall beside a 10 ms p50: on a linear axis the p50 would be one pixel high."""
    scale = latency_scale([0.010, 0.030, 4.0])
    assert scale.log
    assert [round(t * 1000) for t in scale.ticks] == [10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    assert scale.y(0.010) == PLOT_BOTTOM and scale.y(5.0) == PLOT_TOP
    assert scale.y(0.1) == pytest.approx((PLOT_TOP + PLOT_BOTTOM) / 2, abs=PLOT_HEIGHT * 0.15)
    assert not latency_scale([0.010, 0.080]).log


def test_an_episode_whose_latency_was_back_before_it_closed_reads_recovered_by_the_close() -> None:
    axis = TimeAxis(T0)
    assert recovery_words("recovered", 0.0, axis) == "recovered by the close"
    assert recovery_words("recovered", 12.0, axis) == "recovered 12s after the close"
