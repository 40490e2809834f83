"""The prober against real loopback targets, each pod on its own 127.x address.

Timing margins: a CO-correct prober can only add to a target's latency (it measures from the
intended start), so its quantiles are bounded below by the ground truth, tightly; above,
they may gain whatever a loaded CI machine adds to the event loop, so the upper margins are
generous (hundreds of ms) and still far from what a closed-loop prober would report.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable

import pytest

from exporter import eventloop
from exporter.core.histogram import NATIVE_SCHEMA, RELATIVE_ACCURACY, cumulative_buckets
from exporter.core.probing import NS_PER_S, FailureReason, ProbeResult, ProbeTarget
from exporter.exposition import Exposition
from exporter.probe import ProbeOutcome, Prober, ProbeSource, probe_http
from tests.conftest import wait_for
from tests.latency.quantiles import (
    buckets,
    exact_quantile,
    histogram_quantile,
    native_histogram_quantile,
)
from tests.latency.targets import Blackhole, Stall, TargetServer, constant, unused_port

# The load of a busy 2-core CI machine may add this much to any latency (event-loop lag).
MACHINE_SLACK = 0.3


@contextlib.asynccontextmanager
async def running(prober: Prober) -> AsyncIterator[Prober]:
    task = asyncio.create_task(prober.run())
    try:
        yield prober
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def endpoint(pod: str, address: str, port: int, protocol: str = "http", **kw: float) -> ProbeTarget:
    return ProbeTarget("shop", "web", "endpoint", pod, address, port, protocol, "/", **kw)


def of(results: list[ProbeResult], target: ProbeTarget) -> list[ProbeResult]:
    return [r for r in results if r.target == target]


def exposition(prober: Prober) -> str:
    return Exposition([ProbeSource(prober.ledger)]).render()


async def test_a_target_stall_lands_in_the_tail_as_the_intended_schedule_says() -> None:
    """Base latency 2 ms, a 1 s stall, probes every 10 ms: from the intended schedule a real
    client's p99 is ~1 s (a closed-loop prober would report ~2 ms: it sends one probe
    during the stall instead of 100)."""
    base, interval = 0.002, 0.01
    t0 = time.perf_counter()
    stall = Stall(t0 + 0.2, t0 + 1.2)
    end_ns = round((t0 + 1.4) * NS_PER_S)
    results: list[ProbeResult] = []
    async with TargetServer("127.0.0.2", delay=constant(base, stall)) as server:
        target = endpoint("web-1", "127.0.0.2", server.port, interval=interval, slo=0.05)
        prober = Prober(on_result=results.append, phase_seed="node-a")
        prober.set_targets([target])

        def covered() -> bool:
            starts = sorted(r.intended_ns for r in results)
            if not starts or starts[-1] <= end_ns:
                return False
            upto = [s for s in starts if s <= end_ns]
            return len(upto) == (upto[-1] - upto[0]) // 10_000_000 + 1

        async with running(prober):
            await wait_for(covered, "every intended start up to t0 + 1.4 s recorded", timeout=30)

    starts = sorted(r.intended_ns for r in results)
    steps = {b - a for a, b in itertools.pairwise(starts)}
    assert steps == {10_000_000}  # one sample per intended start: nothing thinned out
    series = prober.ledger.durations[("shop", "web", "endpoint", "web-1", "steady")]
    assert series.count == len(results)
    assert all(r.ok for r in results)

    truth = [base + stall.hold(r.intended_ns / NS_PER_S) for r in results]
    for q in (0.5, 0.99):
        expected = exact_quantile(truth, q)
        recorded = series.quantile(q)
        assert recorded is not None
        # a probe sent up to 1 ms early may fall on the other side of the stall's start: one
        # interval of truth; then the fine histogram's 2.17%.
        assert recorded >= (expected - interval) * (1 - RELATIVE_ACCURACY), q
        assert recorded <= (expected + MACHINE_SLACK) * (1 + RELATIVE_ACCURACY), q
    assert series.quantile(0.99) > 100 * base  # far from the closed-loop answer
    # /metrics: PromQL's estimate over the native histogram is within one bucket (< 15%) of
    # the same numbers; over the classic layout, within one classic bucket (< 5/3).
    expected = exact_quantile(truth, 0.99)
    indexes, counts = series.native_buckets()
    native_p99 = native_histogram_quantile(
        0.99, list(zip(indexes, counts, strict=True)), series.native_zero_count, NATIVE_SCHEMA
    )
    assert (expected - interval) * 0.85 <= native_p99 <= (expected + MACHINE_SLACK) * 1.15
    classic_p99 = histogram_quantile(
        0.99, buckets(cumulative_buckets(series.bounds, series.bucket_counts))
    )
    assert (expected - interval) * 0.6 <= classic_p99 <= (expected + MACHINE_SLACK) * 5 / 3


async def test_the_prober_s_own_stall_lands_in_the_tail_and_in_its_lag() -> None:
    """The agent's event loop freezes for 0.3 s: the probes it owed are not thinned out. Those
    past their deadline (timeout 0.1 s) are `missed` with their lag as latency; the rest are
    sent late and measured from their intended start."""
    results: list[ProbeResult] = []
    async with TargetServer("127.0.0.3", mode="tcp") as server:
        target = endpoint("web-2", "127.0.0.3", server.port, "tcp", interval=0.01, timeout=0.1)
        prober = Prober(on_result=results.append)
        prober.set_targets([target])
        async with running(prober):
            await wait_for(lambda: len(results) >= 5, "first probes")
            time.sleep(0.3)  # the stall under test: block the prober's own event loop
            stalled_at = time.perf_counter_ns()
            await wait_for(
                lambda: any(r.intended_ns > stalled_at + 50_000_000 for r in results),
                "probes after the stall",
            )
    missed = [r for r in results if r.reason is FailureReason.MISSED]
    assert len(missed) >= 15  # ~20: the starts of the first ~0.2 s of the stall
    assert max(r.latency for r in missed) >= 0.25
    late = [r for r in results if r.ok and r.latency >= 0.05]
    assert late  # sent after the stall, measured from the intended start
    assert prober.ledger.failures[("shop", "web", "endpoint", "missed")] == len(missed)
    starts = sorted(r.intended_ns for r in results)
    assert {b - a for a, b in itertools.pairwise(starts)} == {10_000_000}
    lag = prober.ledger.lag
    assert lag.count >= len(results)  # and the probes in flight at the end
    lag_max = lag.quantile(1.0)
    assert lag_max is not None and lag_max >= 0.25


async def test_tcp_and_http_targets_succeed_on_their_own_addresses() -> None:
    results: list[ProbeResult] = []
    async with (
        TargetServer("127.0.0.4", mode="tcp") as tcp_server,
        TargetServer("127.0.0.5", status=302) as http_server,
    ):
        tcp = endpoint("tcp-1", "127.0.0.4", tcp_server.port, "tcp", interval=0.02)
        http = endpoint("http-1", "127.0.0.5", http_server.port, interval=0.02)
        prober = Prober(on_result=results.append)
        prober.set_targets([tcp, http])
        async with running(prober):
            await wait_for(
                lambda: len(of(results, tcp)) >= 5 and len(of(results, http)) >= 5, "probes"
            )
    assert all(r.ok for r in results)  # 3xx is success, as for a kubelet probe
    assert tcp_server.requests >= 5 and http_server.requests >= 5
    assert not prober.ledger.failures
    assert all(r.latency < 1.0 for r in results)


async def test_failures_are_counted_by_reason_and_their_time_is_in_the_tail() -> None:
    results: list[ProbeResult] = []
    hole = Blackhole("127.0.0.10")
    try:
        async with (
            TargetServer("127.0.0.6", mode="reset") as resetting,
            TargetServer("127.0.0.7", mode="silent") as silent,
            TargetServer("127.0.0.8", status=500) as failing,
        ):
            every = {"interval": 0.05}
            targets = {
                "refused": endpoint(
                    "p-refused", "127.0.0.9", unused_port("127.0.0.9"), "tcp", **every
                ),
                "reset": endpoint("p-reset", "127.0.0.6", resetting.port, **every),
                "timeout": endpoint("p-silent", "127.0.0.7", silent.port, timeout=0.2, **every),
                "bad_status": endpoint("p-500", "127.0.0.8", failing.port, **every),
                "timeout_tcp": endpoint(
                    "p-hole", "127.0.0.10", hole.port, "tcp", timeout=0.2, **every
                ),
            }
            prober = Prober(on_result=results.append)
            prober.set_targets(targets.values())
            async with running(prober):
                await wait_for(
                    lambda: all(
                        sum(r.target.pod == t.pod for r in results) >= 3 for t in targets.values()
                    ),
                    "three results per target",
                )
    finally:
        hole.close()
    by_pod = {t.pod: [r for r in results if r.target.pod == t.pod] for t in targets.values()}
    assert {r.reason for r in by_pod["p-refused"]} == {FailureReason.REFUSED}
    assert {r.reason for r in by_pod["p-reset"]} == {FailureReason.RESET}
    assert {r.reason for r in by_pod["p-silent"]} == {FailureReason.TIMEOUT}
    assert {r.reason for r in by_pod["p-500"]} == {FailureReason.BAD_STATUS}
    assert {r.detail for r in by_pod["p-500"]} == {"HTTP 500"}
    assert {r.reason for r in by_pod["p-hole"]} == {FailureReason.TIMEOUT}
    for pod in ("p-silent", "p-hole"):
        assert min(r.latency for r in by_pod[pod]) >= 0.2  # the timeout, or more
        series = prober.ledger.durations[("shop", "web", "endpoint", pod, "steady")]
        p50 = series.quantile(0.5)
        assert series.count == len(by_pod[pod]) and p50 is not None and p50 >= 0.19
    failures = prober.ledger.failures
    for reason in ("refused", "reset", "timeout", "bad_status"):
        assert failures[("shop", "web", "endpoint", reason)] >= 3
    text = exposition(prober)
    assert 'tailwatch_probe_failures_total{namespace="shop",reason="refused"' in text


async def test_the_connection_bound_holds_and_waiting_counts_in_the_latency() -> None:
    """Six pods answering in 50 ms, probed every 50 ms with at most 3 connections (twice
    what 3 connections can serve): the server never sees more than 3 at once, and the
    probes' latencies grow with their wait for a free connection."""
    results: list[ProbeResult] = []
    async with TargetServer("127.0.0.11", delay=constant(0.05)) as server:
        targets = [endpoint(f"pod-{i}", "127.0.0.11", server.port, interval=0.05) for i in range(6)]
        prober = Prober(on_result=results.append, max_connections=3)
        prober.set_targets(targets)
        async with running(prober):
            await wait_for(lambda: len(results) >= 30, "30 probes")
    assert server.peak_concurrent <= 3
    assert prober.peak_connections == 3
    assert all(r.ok for r in results)
    assert max(r.latency for r in results) >= 0.15  # 50 ms of service, the rest waiting


async def test_a_probe_that_never_gets_a_connection_is_missed_not_hidden() -> None:
    """One connection, held for its whole 1 s timeout by a target that never answers: the
    probes of a 100 ms-timeout target queued behind it fail as `missed` at their deadline,
    with their full wait as latency."""
    results: list[ProbeResult] = []
    forever = asyncio.Event()

    async def hang(target: ProbeTarget, clock_ns: Callable[[], int]) -> ProbeOutcome:
        await forever.wait()
        raise AssertionError("never answers")

    hog = endpoint("hog", "127.0.0.1", 1, interval=0.02, timeout=1.0)
    victim = endpoint("victim", "127.0.0.1", 2, interval=0.02, timeout=0.1)
    prober = Prober(on_result=results.append, max_connections=1, probe=hang)
    prober.set_targets([hog])
    async with running(prober):
        await wait_for(lambda: prober.open_connections == 1, "the hog holding the connection")
        prober.set_targets([hog, victim])
        await wait_for(lambda: len(of(results, victim)) >= 3, "three probes of the victim")
    missed = of(results, victim)
    assert {r.reason for r in missed} == {FailureReason.MISSED}
    assert {r.detail for r in missed} == {"all connections were busy"}
    assert all(r.latency >= 0.1 for r in missed)


async def test_replaced_targets_stop_and_their_series_disappear() -> None:
    results: list[ProbeResult] = []
    async with (
        TargetServer("127.0.0.12") as a,
        TargetServer("127.0.0.13") as b,
    ):
        old = endpoint("old-pod", "127.0.0.12", a.port, interval=0.02)
        new = endpoint("new-pod", "127.0.0.13", b.port, interval=0.02)
        service = ProbeTarget("shop", "web", "service", "", "127.0.0.13", b.port, "http",
                              interval=0.02, slo=0.05)  # fmt: skip
        prober = Prober(on_result=results.append)
        prober.set_targets([old, service])
        async with running(prober):
            await wait_for(lambda: len(of(results, old)) >= 2, "the old pod probed")
            text = exposition(prober)
            assert 'pod="old-pod"' in text
            assert 'le="0.05",namespace="shop",pod="",service="web",state="steady"' in text
            prober.set_targets([new, service])
            requests_then = a.requests
            await wait_for(lambda: len(of(results, new)) >= 3, "the new pod probed")
            text = exposition(prober)
    assert 'pod="old-pod"' not in text
    assert 'pod="new-pod"' in text
    assert a.requests <= requests_then + 1  # at most one was in flight
    assert {s["pod"] for s in prober.status()} == {"new-pod", ""}


async def test_status_for_the_targets_api() -> None:
    async with TargetServer("127.0.0.14", status=503) as server:
        target = endpoint("web-9", "127.0.0.14", server.port, interval=0.02, slo=0.05)
        prober = Prober(wall_clock=lambda: 1_700_000_000.0)
        prober.set_targets([target])
        async with running(prober):
            await wait_for(lambda: prober.status()[0]["probes"] >= 2, "two probes")
    [status] = prober.status()
    assert status["address"] == f"127.0.0.14:{server.port}"
    assert status["protocol"] == "http" and status["path"] == "/"
    assert (status["interval_seconds"], status["slo_seconds"]) == (0.02, 0.05)
    assert status["failures"] == {"bad_status": status["probes"]}
    last = status["last"]
    assert (last["ok"], last["reason"], last["detail"]) == (False, "bad_status", "HTTP 503")
    assert last["at"] == "2023-11-14T22:13:20.000+00:00"
    assert status["latency_seconds"]["p99"] > 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
async def test_exposition_passes_promtool() -> None:
    async with TargetServer("127.0.0.15") as server:
        target = endpoint("web-3", "127.0.0.15", server.port, interval=0.02, slo=0.05)
        prober = Prober()
        prober.set_targets([target])
        async with running(prober):
            await wait_for(lambda: prober.ledger.lag.count >= 2, "two probes")
    text = exposition(prober)
    assert "tailwatch_probe_schedule_lag_seconds_bucket{le=" in text
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text.encode(), capture_output=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


# -- the HTTP probe on its own -------------------------------------------------------------


async def raw_server(host: str, response: bytes) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        writer.write(response)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, 0)


RESPONSES = [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", None, ""),
        (b"HTTP/1.0 200 OK\r\n\r\nbody until the server closes", None, ""),
        (b"HTTP/1.1 204 No Content\r\n\r\n", None, ""),
        (b"HTTP/1.1 404 Nope\r\nContent-Length: 0\r\n\r\n", FailureReason.BAD_STATUS, "HTTP 404"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", FailureReason.BAD_RESPONSE, None),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", FailureReason.RESET, None),
        (b"", FailureReason.RESET, None),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab", FailureReason.RESET,
         None),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", FailureReason.BAD_RESPONSE,
         "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", FailureReason.BAD_RESPONSE,
         "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", FailureReason.BAD_RESPONSE, None),
]  # fmt: skip


@pytest.mark.parametrize(("response", "reason", "detail"), RESPONSES)
async def test_http_probe_reads_whole_responses(
    response: bytes, reason: FailureReason | None, detail: str | None
) -> None:
    server = await raw_server("127.0.0.16", response)
    async with server:
        port = server.sockets[0].getsockname()[1]
        outcome = await probe_http(endpoint("p", "127.0.0.16", port), time.perf_counter_ns)
    assert outcome.reason is reason
    if detail is not None:
        assert outcome.detail == detail
    assert (outcome.completed_ns is not None) == (reason in (None, FailureReason.BAD_STATUS))


def test_a_target_replaced_by_one_with_the_same_labels_keeps_its_series() -> None:
    """A new probe interval or address (an annotation changed, a pod IP reused) makes a new
    target, but the same series: its counts go on, they do not start again from zero."""
    prober = Prober()
    old = endpoint("web-0", "127.0.0.15", 8080, interval=1.0)
    new = endpoint("web-0", "127.0.0.16", 8080, interval=0.5)
    prober.set_targets([old])
    prober.ledger.record(old, 0, 0.004, None, at=1.0)
    prober.ledger.record(old, 1, 5.0, FailureReason.TIMEOUT, at=2.0)
    prober.update_targets([old], [new])
    [series] = prober.ledger.durations.values()
    assert series.fine.count == 2
    assert list(prober.ledger.failures.values()) == [1]
    prober.update_targets([new], [])
    assert prober.ledger.durations == {} and prober.ledger.failures == {}


def test_http_probe_on_the_agents_own_loop() -> None:
    """The agent runs on uvloop (exporter/eventloop.py), whose transports are not asyncio's
    classes: every response above is judged the same there."""
    factory = eventloop.loop_factory()
    if factory is None:
        pytest.skip("uvloop is not installed here")

    async def judge(response: bytes) -> ProbeOutcome:
        server = await raw_server("127.0.0.16", response)
        async with server:
            port = server.sockets[0].getsockname()[1]
            return await probe_http(endpoint("p", "127.0.0.16", port), time.perf_counter_ns)

    with asyncio.Runner(loop_factory=factory) as runner:
        for response, reason, detail in RESPONSES:
            outcome = runner.run(judge(response))
            assert outcome.reason is reason, response
            assert detail is None or outcome.detail == detail
