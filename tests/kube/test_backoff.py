"""The reflector backs off like client-go: 0.8 s doubling to 30 s, jittered, reset when healthy."""

from __future__ import annotations

import random

import pytest

from exporter.kube.watching import (
    ApiStatusError,
    Backoff,
    ResourceExpired,
    WatchDecodeError,
    _decode_event,
    _split_lines,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_to_the_cap_with_bounded_jitter() -> None:
    clock = FakeClock()
    backoff = Backoff(0.8, 30.0, 120.0, clock=clock, rng=random.Random(7))
    bases = []
    for _ in range(10):
        delay = backoff.next_delay()
        bases.append(delay)
        clock.now += 1
    expected = [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0, 30.0, 30.0]
    for delay, base in zip(bases, expected, strict=True):
        assert base <= delay < 2 * base


def test_backoff_resets_after_a_healthy_period() -> None:
    clock = FakeClock()
    backoff = Backoff(1.0, 30.0, 120.0, clock=clock, rng=random.Random(1))
    for _ in range(5):
        backoff.next_delay()
    clock.now += 121
    assert backoff.next_delay() < 2.0


def test_split_lines_keeps_a_partial_line() -> None:
    buf = bytearray(b'{"a":1}\n{"b":2}\n{"c"')
    assert _split_lines(buf) == [b'{"a":1}', b'{"b":2}']
    assert bytes(buf) == b'{"c"'


def test_decode_event_errors() -> None:
    with pytest.raises(WatchDecodeError, match="not JSON"):
        _decode_event(b"<html>proxy error</html>")
    with pytest.raises(WatchDecodeError, match="without type or object"):
        _decode_event(b'{"type": "ADDED"}')
    with pytest.raises(ResourceExpired):
        _decode_event(b'{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}}')
    with pytest.raises(ApiStatusError) as info:
        _decode_event(b'{"type":"ERROR","object":{"kind":"Status","code":500,"message":"boom"}}')
    assert info.value.reason == "server_error"
