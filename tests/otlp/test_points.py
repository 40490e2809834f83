"""The pure ingest: checks, cumulative-to-delta, resets, mapping to Services, limits."""

from __future__ import annotations

import math

import pytest

from exporter.core.services import ServiceRef
from exporter.otlp.decode import to_wire
from exporter.otlp.points import (
    Exponential,
    HistogramIngest,
    IngestLimits,
    IngestResult,
    LatencyDelta,
    Outcome,
    buckets_of,
    merge_deltas,
    subtract,
)
from tests.otlp.builders import (
    DELTA,
    SEMCONV_BOUNDS,
    T0,
    WEB,
    explicit_point,
    exponential_point,
    metric,
    request,
)

WEB_REF = ServiceRef("shop", "web")
DB_REF = ServiceRef("shop", "db")
SERVICES = {"web.shop": WEB_REF, "127.96.0.7": WEB_REF, "127.244.1.5": WEB_REF, "db.shop": DB_REF}
STARTED = T0 - 10**9  # the agent started a second before the client streams
S = 10**9


def resolve(host: str, port: int | None) -> ServiceRef | None:
    return SERVICES.get(host)


def make_ingest(**limits: float) -> HistogramIngest:
    return HistogramIngest(
        resolve,
        started_unix_nano=STARTED,
        limits=IngestLimits(**limits),  # type: ignore[arg-type]
    )


def counts(*pairs: tuple[int, int], n: int = len(SEMCONV_BOUNDS) + 1) -> list[int]:
    out = [0] * n
    for index, value in pairs:
        out[index] = value
    return out


def outcomes(result: IngestResult) -> dict[str, int]:
    return {o.value: n for o, n in result.outcomes.items() if n}


def only(result: IngestResult) -> LatencyDelta:
    assert len(result.deltas) == 1, result
    return result.deltas[0]


# -- explicit buckets and cumulative temporality ----------------------------------------


def test_cumulative_points_become_deltas_without_double_counting() -> None:
    ingest = make_ingest()
    first = explicit_point(counts((1, 2), (5, 1)), total=0.1, time=T0 + 1 * S)
    d1 = only(ingest.ingest(request(metric([first])), now=0))
    assert (d1.service, d1.metric, d1.count, d1.sum_seconds) == (
        WEB_REF,
        "http.client.request.duration",
        3,
        0.1,
    )
    assert d1.buckets == ((0.005, 0.01, 2), (0.075, 0.1, 1))
    second = explicit_point(counts((1, 2), (5, 4), (14, 1)), total=20.4, time=T0 + 2 * S)
    d2 = only(ingest.ingest(request(metric([second])), now=1))
    assert (d2.count, d2.sum_seconds) == (4, pytest.approx(20.3))
    # The overflow bucket (10 s, +inf) without a max: recorded at its lower bound.
    assert d2.buckets == ((0.075, 0.1, 3), (10.0, 10.0, 1))
    unchanged = explicit_point(counts((1, 2), (5, 4), (14, 1)), total=20.4, time=T0 + 3 * S)
    result = ingest.ingest(request(metric([unchanged])), now=2)
    assert result.deltas == [] and outcomes(result) == {"accepted": 1}
    assert ingest.outcomes[Outcome.ACCEPTED] == 3


def test_min_and_max_narrow_the_buckets_and_close_the_overflow_bucket() -> None:
    point = explicit_point(counts((1, 1), (14, 1)), total=12.007, min_max=(0.007, 12.0))
    assert only(make_ingest().ingest(request(metric([point])), now=0)).buckets == (
        (0.007, 0.01, 1),
        (10.0, 12.0, 1),
    )


def test_a_single_bucket_without_bounds_is_zero_to_max() -> None:
    point = explicit_point([3], bounds=(), total=0.6, min_max=(0.1, 0.3))
    assert only(make_ingest().ingest(request(metric([point])), now=0)).buckets == ((0.1, 0.3, 3),)


def test_milliseconds_are_converted_to_seconds() -> None:
    point = explicit_point([1, 2, 0], bounds=(5, 10), total=17.0, min_max=(3.0, 7.0))
    delta = only(make_ingest().ingest(request(metric([point], unit="ms")), now=0))
    assert delta.sum_seconds == pytest.approx(0.017)
    assert delta.buckets == ((0.003, 0.005, 1), (0.005, 0.007, 2))


def test_a_reset_counts_the_new_points_since_the_reset() -> None:
    ingest = make_ingest()
    ingest.ingest(request(metric([explicit_point(counts((2, 10)), total=0.2)])), now=0)
    # The client restarted: a new start time, fewer points than before.
    restarted = explicit_point(counts((3, 4)), total=0.1, start=T0 + 5 * S, time=T0 + 6 * S)
    assert only(ingest.ingest(request(metric([restarted])), now=1)).count == 4
    # Same start time, but a count went down (a client that reset without saying so).
    dropped = explicit_point(counts((3, 1), (4, 1)), total=0.05, start=T0 + 5 * S,
                             time=T0 + 7 * S)  # fmt: skip
    assert only(ingest.ingest(request(metric([dropped])), now=2)).count == 2
    # A bucket went down while the total went up: a reset as well.
    shifted = explicit_point(counts((3, 0), (4, 3)), total=0.06, start=T0 + 5 * S,
                             time=T0 + 8 * S)  # fmt: skip
    delta = only(ingest.ingest(request(metric([shifted])), now=3))
    assert (delta.count, delta.buckets) == (3, ((0.05, 0.075, 3),))


def test_a_retried_or_reordered_export_is_not_counted_twice() -> None:
    ingest = make_ingest()
    p1 = explicit_point(counts((1, 1)), total=0.01, time=T0 + 1 * S)
    p2 = explicit_point(counts((1, 3)), total=0.03, time=T0 + 2 * S)
    assert only(ingest.ingest(request(metric([p1])), now=0)).count == 1
    assert only(ingest.ingest(request(metric([p2])), now=1)).count == 2
    for again in (p2, p1):
        result = ingest.ingest(request(metric([again])), now=2)
        assert result.deltas == [] and outcomes(result) == {"accepted": 1}
    p3 = explicit_point(counts((1, 4)), total=0.04, time=T0 + 3 * S)
    assert only(ingest.ingest(request(metric([p3])), now=3)).count == 1


def test_the_first_point_of_a_stream_older_than_the_agent_only_sets_the_baseline() -> None:
    ingest = make_ingest()
    old = explicit_point(counts((1, 50)), total=0.5, start=STARTED - 3600 * S)
    result = ingest.ingest(request(metric([old])), now=0)
    assert result.deltas == [] and outcomes(result) == {"accepted": 1}
    newer = explicit_point(counts((1, 53)), total=0.53, start=STARTED - 3600 * S,
                           time=T0 + 2 * S)  # fmt: skip
    assert only(ingest.ingest(request(metric([newer])), now=1)).count == 3
    # No start time at all: the same.
    unknown = explicit_point(counts((1, 5)), total=0.05, start=0, attrs={**WEB, "x": 1})
    assert ingest.ingest(request(metric([unknown])), now=2).deltas == []


def test_a_forgotten_stream_never_counts_its_history_again() -> None:
    ingest = make_ingest(stream_idle_seconds=60)
    p1 = explicit_point(counts((1, 5)), total=0.05, time=T0 + 1 * S)
    assert only(ingest.ingest(request(metric([p1])), now=0)).count == 5
    # Idle past the limit: forgotten, and the horizon moves past its last point.
    p2 = explicit_point(counts((1, 7)), total=0.07, time=T0 + 100 * S)
    assert ingest.ingest(request(metric([p2])), now=100).deltas == []
    assert ingest.horizon == T0 + 1 * S
    p3 = explicit_point(counts((1, 8)), total=0.08, time=T0 + 101 * S)
    assert only(ingest.ingest(request(metric([p3])), now=101)).count == 1
    # A stream that starts after the horizon still counts in full from its first point.
    fresh = explicit_point(counts((1, 2)), total=0.02, start=T0 + 50 * S, time=T0 + 102 * S,
                           attrs={**WEB, "http.request.method": "POST"})  # fmt: skip
    assert only(ingest.ingest(request(metric([fresh])), now=102)).count == 2


def test_changed_bounds_with_the_same_start_set_a_new_baseline() -> None:
    ingest = make_ingest()
    ingest.ingest(request(metric([explicit_point([1, 1, 1], bounds=(0.1, 1), total=2.0)])), 0)
    other = explicit_point([1, 2, 1, 1], bounds=(0.1, 0.5, 1), time=T0 + 2 * S, total=3.0)
    result = ingest.ingest(request(metric([other])), now=1)
    assert result.deltas == [] and outcomes(result) == {"accepted": 1}
    more = explicit_point([1, 2, 1, 3], bounds=(0.1, 0.5, 1), time=T0 + 3 * S, total=9.0)
    assert only(ingest.ingest(request(metric([more])), now=2)).count == 2


# -- delta temporality, exponential histograms ------------------------------------------


def test_delta_points_are_used_as_they_are() -> None:
    ingest = make_ingest()
    for i in range(3):
        point = explicit_point(counts((2, 2)), total=0.04, start=T0 + i * S,
                               time=T0 + (i + 1) * S)  # fmt: skip
        delta = only(ingest.ingest(request(metric([point], temporality=DELTA)), now=i))
        assert (delta.count, delta.sum_seconds) == (2, 0.04)
    assert ingest.outcomes[Outcome.ACCEPTED] == 3


def test_exponential_buckets_are_powers_of_the_base() -> None:
    # scale 3: base 2**(1/8); index -53 is (2**(-53/8), 2**(-52/8)] ≈ (10.2 ms, 11.0 ms].
    point = exponential_point([4, 0, 1], scale=3, offset=-53, zero_count=1, total=0.06)
    delta = only(make_ingest().ingest(request(metric([point], temporality=DELTA)), now=0))
    assert delta.count == 6
    low, high, n = delta.buckets[1]
    assert (low, high, n) == (pytest.approx(2 ** (-53 / 8)), pytest.approx(2 ** (-52 / 8)), 4)
    assert delta.buckets[0] == (0.0, 0.0, 1)  # the zero bucket
    assert delta.buckets[2][2] == 1 and delta.buckets[2][0] == pytest.approx(2 ** (-51 / 8))


def test_exponential_cumulative_deltas_follow_a_scale_change() -> None:
    ingest = make_ingest()
    p1 = exponential_point([1, 1], scale=4, offset=-100, total=0.03, time=T0 + 1 * S)
    assert only(ingest.ingest(request(metric([p1])), now=0)).count == 2
    # The SDK halved the resolution to fit a wider range: scale 3, index >> 1.
    p2 = exponential_point([2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], scale=3, offset=-50,
                           total=1.2, time=T0 + 2 * S)  # fmt: skip
    delta = only(ingest.ingest(request(metric([p2])), now=1))
    assert delta.count == 1
    assert delta.buckets == ((pytest.approx(2 ** (-38 / 8)), pytest.approx(2 ** (-37 / 8)), 1),)


def test_an_exponential_point_of_zeros_alone_ignores_its_offset() -> None:
    """Only the zero bucket holds values: an offset no bucket uses (here far past any
    double) is not a reason to refuse the point, nor to fail on it."""
    point = exponential_point([], scale=-3, offset=128, zero_count=2, total=0.0)
    delta = only(make_ingest().ingest(request(metric([point], temporality=DELTA)), now=0))
    assert delta.buckets == ((0.0, 0.0, 2),) and delta.count == 2


def test_subtract_exponential_with_different_offsets() -> None:
    current = Exponential(2, 0.0, 1, 10, [1, 2, 3])
    previous = Exponential(2, 0.0, 1, 11, [1])
    assert subtract(current, previous) == Exponential(2, 0.0, 0, 10, [1, 1, 3])
    assert subtract(previous, current) is None


def test_buckets_of_an_empty_distribution() -> None:
    assert buckets_of(Exponential(0, 0.0, 0, 0, []), 1.0, None, None) == ()


# -- rejections ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "kind"),
    [
        (explicit_point([1, 0, 0], bounds=(0.1, math.nan), total=0.1), "bad_bounds"),
        (explicit_point([1, 0, 0], bounds=(-1, 0.1), total=0.1), "bad_bounds"),
        (explicit_point([1, 0, 0], bounds=(0.1, math.inf), total=0.1), "bad_bounds"),
        (explicit_point([1, 0, 0], bounds=(0.5, 0.1), total=0.1), "bad_bounds"),
        (explicit_point([1, 0, 0], bounds=(0.1, 0.1), total=0.1), "bad_bounds"),
        (explicit_point([1, 0], bounds=(0.1, 0.5), total=0.1), "bucket_count_mismatch"),
        (explicit_point([1, 0, 0, 0], bounds=(0.1, 0.5), total=0.1), "bucket_count_mismatch"),
        (explicit_point([1, 0, 0], bounds=(0.1, 0.5), total=0.1, count=5), "count_mismatch"),
        (explicit_point([], bounds=(), total=0.1, count=1), "no_buckets"),
        (explicit_point([1, 0, 0], bounds=(0.1, 0.5)), "no_sum"),
        (explicit_point([1, 0, 0], bounds=(0.1, 0.5), total=math.nan), "bad_sum"),
        (explicit_point([1, 0, 0], bounds=(0.1, 0.5), total=-1.0), "bad_sum"),
        (exponential_point([1], scale=0, offset=0, total=1.0, negative=[1]), "negative_values"),
        (exponential_point([1], scale=21, offset=0, total=1.0), "bad_scale"),
        (exponential_point([1], scale=-11, offset=0, total=1.0), "bad_scale"),
        (exponential_point([1], scale=0, offset=5000, total=1.0), "bad_offset"),
        (exponential_point([1] * 5000, scale=20, offset=0, total=1.0), "too_many_buckets"),
    ],
)
def test_malformed_points_are_rejected_and_counted(point: object, kind: str) -> None:
    ingest = make_ingest()
    result = ingest.ingest(request(metric([point])), now=0)  # type: ignore[list-item]
    assert result.deltas == []
    assert outcomes(result) == {"malformed": 1}
    assert list(result.problems) == [kind]
    assert ingest.streams == {}  # a rejected point leaves no state behind


def test_a_bad_point_does_not_spoil_the_good_ones_next_to_it() -> None:
    good = explicit_point(counts((1, 2)), total=0.02)
    bad = explicit_point([1, 0], bounds=(0.1, 0.5), total=0.1, attrs={**WEB, "b": 1})
    result = make_ingest().ingest(request(metric([bad, good])), now=0)
    assert outcomes(result) == {"accepted": 1, "malformed": 1}
    assert only(result).count == 2
    assert "1 malformed (2 bucket_counts for 2 explicit_bounds" in result.error_message()


def test_attributes_that_are_no_key_values_reject_their_point_alone() -> None:
    """The body's parse leaves attributes serialized: a new stream's are read then, and
    bytes that are no KeyValue make that point malformed, not the request."""
    wire = to_wire(request(metric([explicit_point(counts((1, 2)), total=0.02),
                                   explicit_point(counts((1, 1)), total=0.01,
                                                  attrs={**WEB, "b": 1})])))  # fmt: skip
    points = wire.resource_metrics[0].scope_metrics[0].metrics[0].histogram.data_points
    points[1].attributes.append(b"\x0a\x01\xff")  # a key that is not UTF-8
    ingest = make_ingest()
    result = ingest.ingest(wire, now=0)
    assert outcomes(result) == {"accepted": 1, "malformed": 1}
    assert list(result.problems) == ["bad_attributes"]
    assert only(result).count == 2 and len(ingest.streams) == 1


def test_a_stream_whose_attributes_change_is_a_new_stream() -> None:
    """A stream is its attributes: a value that changes (here the status code) starts
    another stream, whose first point counts in full as any new stream's; the old one
    keeps its state."""
    ingest = make_ingest()
    ok = {**WEB, "http.response.status_code": 200}
    p1 = explicit_point(counts((1, 2)), total=0.02, attrs=ok, time=T0 + 1 * S)
    assert only(ingest.ingest(request(metric([p1])), now=0)).count == 2
    failed = {**WEB, "http.response.status_code": 503}
    p2 = explicit_point(counts((1, 3)), total=0.03, attrs=failed, time=T0 + 2 * S)
    assert only(ingest.ingest(request(metric([p2])), now=1)).count == 3
    p3 = explicit_point(counts((1, 5)), total=0.05, attrs=ok, time=T0 + 3 * S)
    assert only(ingest.ingest(request(metric([p3])), now=2)).count == 3
    assert len(ingest.streams) == 2


def test_a_value_of_another_type_with_the_same_text_is_another_stream() -> None:
    ingest = make_ingest()
    as_int = explicit_point(counts((1, 2)), total=0.02, attrs={**WEB, "code": 200})
    as_text = explicit_point(counts((1, 5)), total=0.05, attrs={**WEB, "code": "200"})
    result = ingest.ingest(request(metric([as_int, as_text])), now=0)
    assert [d.count for d in result.deltas] == [2, 5]
    assert len(ingest.streams) == 2


def test_the_known_bounds_are_bounded() -> None:
    """Bounds found good are remembered, so streams that share them are checked once; a
    client whose bounds keep changing cannot grow that memory past a fixed size, and its
    points are still checked and counted."""
    ingest = make_ingest(max_streams_per_service=1000)
    points = [explicit_point([1, 1], bounds=(0.001 * (i + 1),), total=0.01,
                             attrs={**WEB, "i": i}) for i in range(300)]  # fmt: skip
    assert outcomes(ingest.ingest(request(metric(points)), now=0)) == {"accepted": 300}
    assert 0 < len(ingest._checked_bounds) <= 256
    bad = explicit_point([2, 1], bounds=(math.nan,), total=0.03, attrs={**WEB, "i": 0})
    assert list(ingest.ingest(request(metric([bad])), now=1).problems) == ["bad_bounds"]


def test_what_streams_share_is_bounded_when_clients_come_and_go() -> None:
    """Each client's stream prefix (its resource, scope and metric) is kept as one object
    for its streams; clients that come and go (a new instance id each restart) cannot grow
    that memory past a fixed size, and a stream that outlives a clearing still counts
    only what is new."""
    ingest = make_ingest(max_streams_per_service=2000)

    def export(client: int, n: int) -> IngestResult:
        point = explicit_point(counts((1, n)), total=0.01 * n, time=T0 + n * S)
        msg = request(metric([point]), resource={"service.instance.id": f"pod-{client}"})
        return ingest.ingest(msg, now=n)

    assert only(export(0, 1)).count == 1
    for client in range(1, 1100):
        assert outcomes(export(client, 1)) == {"accepted": 1}
    assert len(ingest._prefixes) <= 1024 and len(ingest._services) == 1
    assert only(export(0, 3)).count == 2
    assert len(ingest.streams) == 1100


def test_wrong_metric_shapes_and_units_reject_all_their_points() -> None:
    points = [explicit_point(counts((1, 1)), total=0.01)] * 2
    gauge = metric(points)
    gauge.ClearField("histogram")
    gauge.gauge.data_points.add(as_double=1.0)
    cases = [
        (metric(points, unit="min"), "bad_unit", 2),
        (metric(points, temporality=0), "bad_temporality", 2),
        (gauge, "not_a_histogram", 1),
    ]
    for m, kind, n in cases:
        result = make_ingest().ingest(request(m), now=0)
        assert outcomes(result) == {"malformed": n} and list(result.problems) == [kind]


def test_other_metrics_are_ignored_neither_taken_nor_rejected() -> None:
    ingest = make_ingest()
    result = ingest.ingest(
        request(
            metric(
                [explicit_point(counts((1, 1)), total=0.01)], name="http.server.request.duration"
            )
        ),
        now=0,
    )
    assert result.deltas == [] and outcomes(result) == {"ignored": 1}
    assert result.rejected == 0 and ingest.ignored == 1


def test_the_metric_names_are_the_current_semantic_conventions_or_the_users() -> None:
    """`rpc.client.call.duration` is read by default; the deprecated `rpc.client.duration`
    is not (a client migrating with rpc/dup sends both for the same calls), unless named."""
    point = [explicit_point(counts((1, 1)), total=0.01, attrs=WEB)]
    both = request(metric(point, name="rpc.client.call.duration"),
                   metric(point, name="rpc.client.duration"))  # fmt: skip
    assert outcomes(make_ingest().ingest(both, now=0)) == {"accepted": 1, "ignored": 1}
    mine = HistogramIngest(resolve, started_unix_nano=T0, metrics=["rpc.client.duration"])
    assert outcomes(mine.ingest(both, now=0)) == {"accepted": 1, "ignored": 1}


# -- mapping to Services ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attrs", "resource"),
    [
        ({"server.address": "web.shop.svc.cluster.local"}, {}),
        ({"server.address": "web.shop"}, {}),
        ({"server.address": "127.96.0.7", "server.port": 80}, {}),
        ({"server.address": "127.244.1.5:8080"}, {}),
        ({"net.peer.name": "web.shop.svc", "net.peer.port": "8080"}, {}),
        ({"server.address": "web"}, {"k8s.namespace.name": "shop"}),
        ({"server.address": "web.shop", "net.peer.name": "db.shop"}, {}),  # current semconv wins
    ],
)
def test_streams_map_to_services(attrs: dict[str, str | int], resource: dict[str, str]) -> None:
    point = explicit_point(counts((1, 1)), total=0.01, attrs=attrs)
    assert only(make_ingest().ingest(request(metric([point]), resource=resource), now=0)).service \
        == WEB_REF  # fmt: skip


@pytest.mark.parametrize(
    ("attrs", "kind"),
    [
        ({}, "no_server_address"),
        ({"server.address": ""}, "no_server_address"),
        ({"server.address": "web"}, "unknown_service"),  # no client namespace to complete it
        ({"server.address": "api.stripe.com"}, "unknown_service"),
        ({"server.address": "127.96.0.8"}, "unknown_service"),
        ({"server.address": "cache.shop.svc.cluster.local"}, "unknown_service"),
        ({"server.address": "web.shop" + "." * 300}, "unknown_service"),  # too long to parse
    ],
)
def test_unmapped_points(attrs: dict[str, str], kind: str) -> None:
    ingest = make_ingest()
    point = explicit_point(counts((1, 1)), total=0.01, attrs=attrs)
    result = ingest.ingest(request(metric([point])), now=0)
    assert outcomes(result) == {"unmapped": 1} and list(result.problems) == [kind]
    assert ingest.streams == {}


def test_an_idle_stream_of_a_service_that_left_is_unmapped() -> None:
    services = dict(SERVICES)
    ingest = HistogramIngest(lambda host, port: services.get(host), started_unix_nano=STARTED)
    p1 = explicit_point(counts((1, 1)), total=0.01, time=T0 + 1 * S)
    assert only(ingest.ingest(request(metric([p1])), now=0)).count == 1
    del services["web.shop"]  # no longer opted in
    p2 = explicit_point(counts((1, 1)), total=0.01, time=T0 + 2 * S)  # the same, repeated
    assert outcomes(ingest.ingest(request(metric([p2])), now=1)) == {"unmapped": 1}


def test_the_resolver_is_asked_once_per_address_in_a_request() -> None:
    asked: list[tuple[str, int | None]] = []

    def counting(host: str, port: int | None) -> ServiceRef | None:
        asked.append((host, port))
        return resolve(host, port)

    ingest = HistogramIngest(counting, started_unix_nano=STARTED)
    points = [explicit_point(counts((1, 1)), total=0.01, attrs={**WEB, "i": i}) for i in range(50)]
    assert ingest.ingest(request(metric(points)), now=0).outcomes[Outcome.ACCEPTED] == 50
    assert asked == [("web.shop", 8080)]


def test_attribute_order_is_not_part_of_a_stream() -> None:
    ingest = make_ingest()
    a = explicit_point(counts((1, 1)), total=0.01, attrs={"a": 1, **WEB}, time=T0 + 1 * S)
    b = explicit_point(counts((1, 3)), total=0.03, attrs={**WEB, "a": 1}, time=T0 + 2 * S)
    ingest.ingest(request(metric([a])), now=0)
    assert only(ingest.ingest(request(metric([b])), now=1)).count == 2
    assert len(ingest.streams) == 1


# -- limits ---------------------------------------------------------------------------------


def test_streams_per_service_limit() -> None:
    ingest = make_ingest(max_streams_per_service=3)
    points = [explicit_point(counts((1, 1)), total=0.01, attrs={**WEB, "i": i}) for i in range(5)]
    db = explicit_point(counts((1, 1)), total=0.01, attrs={"server.address": "db.shop"})
    result = ingest.ingest(request(metric([*points, db])), now=0)
    assert outcomes(result) == {"accepted": 4, "over_limit": 2}
    assert "shop/web has 3 streams already" in result.error_message()
    # Known streams keep working; the refused ones are refused again.
    again = [explicit_point(counts((1, 2)), total=0.02, attrs={**WEB, "i": i},
                            time=T0 + 2 * S) for i in range(5)]  # fmt: skip
    result = ingest.ingest(request(metric(again)), now=1)
    assert outcomes(result) == {"accepted": 3, "over_limit": 2}
    assert [d.count for d in result.deltas] == [1, 1, 1]
    assert ingest.per_service == {WEB_REF: 3, DB_REF: 1}


def test_the_stream_table_forgets_the_least_recently_used() -> None:
    ingest = make_ingest(max_streams=2)
    for i in range(3):
        point = explicit_point(counts((1, 1)), total=0.01, attrs={**WEB, "i": i},
                               time=T0 + (i + 1) * S)  # fmt: skip
        assert outcomes(ingest.ingest(request(metric([point])), now=i)) == {"accepted": 1}
    assert len(ingest.streams) == 2 and ingest.per_service == {WEB_REF: 2}
    assert ingest.horizon == T0 + 1 * S  # stream 0's last point


def test_points_per_request_limit() -> None:
    ingest = make_ingest(max_points_per_request=4)
    points = [explicit_point(counts((1, 1)), total=0.01, attrs={**WEB, "i": i}) for i in range(3)]
    result = ingest.ingest(request(metric(points), metric(points, name="rpc.client.call.duration")),
                           now=0)  # fmt: skip
    assert outcomes(result) == {"accepted": 4, "over_limit": 2}
    assert result.problems["points_per_request"][1] == 2


# -- merging a request's deltas per Service -----------------------------------------------


def test_a_requests_streams_merge_into_one_delta_per_service() -> None:
    """What the receiver hands to the event loop: the streams of one request (here two
    methods of web and one of db) become one delta per Service, with every request
    counted once and the buckets of equal edges added up."""
    get = LatencyDelta(WEB_REF, "m", ((0.0, 0.005, 3), (0.01, 0.025, 1)), 0.03, 4)
    post = LatencyDelta(WEB_REF, "m", ((0.005, 0.01, 2), (0.01, 0.025, 5)), 0.09, 7)
    db = LatencyDelta(DB_REF, "m", ((0.1, 0.25, 1),), 0.2, 1)
    merged = merge_deltas([get, db, post])
    assert merged == [
        LatencyDelta(WEB_REF, "m", ((0.0, 0.005, 3), (0.005, 0.01, 2), (0.01, 0.025, 6)),
                     pytest.approx(0.12), 11),
        LatencyDelta(DB_REF, "m", ((0.1, 0.25, 1),), 0.2, 1),
    ]  # fmt: skip
    assert merge_deltas([]) == []


def test_merged_adds_the_counts_of_one_layout_before_bucketing() -> None:
    """What the event loop records: a request's explicit points of one Service and layout
    add up bucket by bucket, the same as merging their deltas; with min and max, the
    merged buckets are narrowed to the smallest min and the largest max."""
    points = [explicit_point(counts((1, 2), (3, 1)), total=0.05, attrs={**WEB, "m": "GET"}),
              explicit_point(counts((1, 1), (5, 4)), total=0.9, attrs={**WEB, "m": "PUT"}),
              explicit_point(counts((2, 3)), total=0.02,
                             attrs={"server.address": "db.shop"})]  # fmt: skip
    result = make_ingest().ingest(request(metric(points)), now=1)
    assert result.merged() == merge_deltas(result.deltas)
    assert [(d.service, d.count) for d in result.merged()] == [(WEB_REF, 8), (DB_REF, 3)]
    narrowed = [explicit_point(counts((0, 2)), total=0.01, attrs={**WEB, "m": "GET"},
                               min_max=(0.0021, 0.004)),
                explicit_point(counts((0, 1), (2, 1)), total=0.01, attrs={**WEB, "m": "PUT"},
                               min_max=(0.003, 0.02))]  # fmt: skip
    (web,) = make_ingest().ingest(request(metric(narrowed)), now=1).merged()
    assert web.count == 4
    assert web.buckets == ((pytest.approx(0.0021), 0.005, 3), (0.01, pytest.approx(0.02), 1))
