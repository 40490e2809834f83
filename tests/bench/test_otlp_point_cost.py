"""OTLP ingest per data point at the reference load, in process: what the agent pays for
each point of the reference load's OTLP traffic (docs/design.md, *Reference load and
budgets*: 10 clients each exporting 100 cumulative `http.client.request.duration` streams a
second, gzip protobuf, a third of every stream's buckets moving), split into its phases.
Run: .venv/bin/python -m pytest tests/bench/test_otlp_point_cost.py -m bench -s

The requests are the reference load's own (`reference_load.otlp_body`), handled as the
receiver handles a small request (`OtlpReceiver._ingest_here`): inflate and parse, ingest,
then merge the request's deltas for the event loop. Each phase is timed with process CPU
time around every request, best of RUNS passes over the same exports with a fresh ingest
each, after one export that makes every stream known. At 1,000 points/s, every µs per point
is 0.1% of a core. A cProfile of one pass says which functions the ingest's time goes to.
Numbers go to docs/performance.md, "OTLP ingest".
"""

from __future__ import annotations

import cProfile
import io
import pstats
import random
import time

import pytest

from exporter.core.episodes import Source
from exporter.core.rules import CorrelationSettings
from exporter.core.services import ServiceRef
from exporter.core.tails import ServiceLatency
from exporter.metrics import ClientLatency
from exporter.otlp.decode import Encoding, decode_request
from exporter.otlp.points import HistogramIngest, LatencyDelta, merge_deltas
from tests.bench.reference_load import OTLP_CLIENTS, STREAMS, otlp_body
from tests.otlp.builders import SEMCONV_BOUNDS

pytestmark = [pytest.mark.bench, pytest.mark.timeout(300)]

EXPORTS = 31  # per client: one to make the streams known, then 30 measured (30,000 points)
RUNS = 5
REFS = {f"svc{i}.shop": ServiceRef("shop", f"svc{i}") for i in range(20)}


def resolve(host: str, port: int | None) -> ServiceRef | None:
    return REFS.get(host)


def reference_bodies() -> list[bytes]:
    """Every client's exports, in the order the reference load sends them."""
    rng = random.Random(1)
    totals = [[[0] * (len(SEMCONV_BOUNDS) + 1) for _ in range(STREAMS)]
              for _ in range(OTLP_CLIENTS)]  # fmt: skip
    return [otlp_body(client, totals[client], export, rng)
            for export in range(EXPORTS) for client in range(OTLP_CLIENTS)]  # fmt: skip


def one_pass(bodies: list[bytes]) -> dict[str, float]:
    """CPU seconds per point of each phase over the measured exports."""
    ingest = HistogramIngest(resolve, started_unix_nano=1)
    for i, body in enumerate(bodies[:OTLP_CLIENTS]):
        ingest.ingest(decode_request(body, Encoding.PROTOBUF, compressed=True), float(i))
    spent = dict.fromkeys(("decode", "ingest", "merge"), 0.0)
    deltas = 0
    clock = time.process_time
    for i, body in enumerate(bodies[OTLP_CLIENTS:]):
        t0 = clock()
        request = decode_request(body, Encoding.PROTOBUF, compressed=True)
        t1 = clock()
        result = ingest.ingest(request, float(i + OTLP_CLIENTS))
        t2 = clock()
        merged = result.merged()
        t3 = clock()
        spent["decode"] += t1 - t0
        spent["ingest"] += t2 - t1
        spent["merge"] += t3 - t2
        assert sum(result.outcomes.values()) == STREAMS and not result.rejected
        deltas += sum(d.count for d in merged)
    points = (len(bodies) - OTLP_CLIENTS) * STREAMS
    assert deltas > 0
    return {phase: seconds / points for phase, seconds in spent.items()}


def test_ingest_cost_per_point_at_the_reference_load() -> None:
    bodies = reference_bodies()
    runs = [one_pass(bodies) for _ in range(RUNS)]
    best = {phase: min(run[phase] for run in runs) for phase in runs[0]}
    total = min(sum(run.values()) for run in runs)
    print(f"\n| phase, reference load ({OTLP_CLIENTS} clients x {STREAMS} busy cumulative "
          f"streams, gzip protobuf), best of {RUNS} | µs CPU per point | share of a core "
          "at 1,000 points/s |")  # fmt: skip
    print("| --- | --- | --- |")
    for phase, cost in [*best.items(), ("all of it", total)]:
        print(f"| {phase} | {cost * 1e6:.2f} | {cost * 1000:.2%} |")

    requests = [decode_request(b, Encoding.PROTOBUF, compressed=True) for b in bodies]
    ingest = HistogramIngest(resolve, started_unix_nano=1)
    for i, request in enumerate(requests[:OTLP_CLIENTS]):
        ingest.ingest(request, float(i))
    profile = cProfile.Profile()
    profile.enable()
    for i, request in enumerate(requests[OTLP_CLIENTS:]):
        ingest.ingest(request, float(i + OTLP_CLIENTS)).merged()
    profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(8)
    print("\ncProfile of one pass of ingest + merge (profiled, so slower), by own time:")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))


def test_recording_client_deltas_per_request_and_per_tick() -> None:
    """What the event loop pays to record a second of the reference load's client deltas:
    each request's deltas on arrival (one per Service a request: 200 a second), against
    the agent's way, held and merged per Service at the tick (20 a second): the client
    latency series and the correlator's pending ranges, as `Agent._record_client_deltas`
    feeds them. Side by side in one process, alternating, best of 7."""
    bodies = reference_bodies()
    ingest = HistogramIngest(resolve, started_unix_nano=1)
    seconds: list[list[LatencyDelta]] = []
    for i, body in enumerate(bodies):
        merged = ingest.ingest(decode_request(body, Encoding.PROTOBUF, compressed=True), i)
        if i >= OTLP_CLIENTS:  # the first export of each client only sets the baselines
            if (i - OTLP_CLIENTS) % OTLP_CLIENTS == 0:
                seconds.append([])
            seconds[-1] += merged.merged()

    def record(per_tick: bool) -> float:
        latency = ClientLatency(slo_of=lambda ref: 0.05)
        pending = ServiceLatency(CorrelationSettings())
        start = time.process_time()
        for held in seconds:
            for delta in merge_deltas(held) if per_tick else held:
                latency.record(delta.service, delta.buckets, delta.sum_seconds)
                pending.add_ranges(Source.CLIENT, delta.buckets)
        return (time.process_time() - start) / len(seconds)

    spent: dict[bool, list[float]] = {False: [], True: []}
    for i in range(7):
        for per_tick in (i % 2 == 0, i % 2 == 1):
            spent[per_tick].append(record(per_tick))
    arrival, tick = min(spent[False]), min(spent[True])
    print(f"\n| recording a second of client deltas ({len(seconds[0])} per second) | ms CPU |")
    print("| --- | --- |")
    print(f"| each request's, on arrival | {arrival * 1e3:.2f} |")
    print(f"| merged per Service at the tick | {tick * 1e3:.2f} ({tick / arrival:.2f}) |")
    assert tick < arrival
