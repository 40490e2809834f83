"""The standard process_* families (exporter/process.py): the very lines client_python's
ProcessCollector writes for the same /proc (a fixture one, whose command holds a closing
parenthesis), in the text formats and as protobuf; absent without /proc; empty, never an
error, when /proc has odd files; a process' start time; and a real Prometheus, classic and
native, storing every family from the live /proc of this process. The running agent's own
values: tests/agent/test_process_e2e.py."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.process_collector import ProcessCollector

from exporter.catalogue import FAMILIES, Kind
from exporter.exposition import PROTOBUF_CONTENT_TYPE, Exposition
from exporter.process import ProcessSource
from tests.exposition.node_state import PROC
from tests.exposition.prometheus_proto import METRIC_TYPES, delimited
from tests.exposition.serving import serving
from tests.exposition.test_exposition import PROTOBUF_ACCEPT
from tests.mixin.prometheus import running_prometheus, wait_until

PROCESS_FAMILIES = [f for f in FAMILIES if f.name.startswith("process_")]
NAMES = [f.name for f in PROCESS_FAMILIES]


def client_python(proc: Path) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(proc=str(proc), registry=registry)
    return registry


def test_the_families_are_client_pythons() -> None:
    assert NAMES == [
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
    ]
    assert all(not f.labels for f in PROCESS_FAMILIES)


def test_same_lines_as_client_pythons_process_collector() -> None:
    """Text and OpenMetrics, byte for byte: names, HELP, TYPE and each value computed the
    same way (pages times the page size, clock ticks after btime, utime + stime), with this
    machine's page size and clock tick, as client_python reads them."""
    exposition = Exposition([ProcessSource(PROC)])
    registry = client_python(PROC)
    assert exposition.render() == generate_latest(registry).decode()
    openmetrics = openmetrics_latest(registry).decode()  # type: ignore[no-untyped-call]
    assert exposition.render(openmetrics=True) == openmetrics


def test_the_values_of_the_fixture() -> None:
    """An agent an hour after its start, 64 MiB resident, 23 descriptors open."""
    exposition = Exposition([ProcessSource(PROC, pagesize=4096, ticks=100)])
    values = {s.name: s.value for f in parse_text(exposition.render()) for s in f.samples}
    assert values == {
        "process_virtual_memory_bytes": 412516352,
        "process_resident_memory_bytes": 64 * 2**20,
        "process_start_time_seconds": 1789996400,
        "process_cpu_seconds_total": 29876 / 100 + 4321 / 100,
        "process_open_fds": 23,
        "process_max_fds": 1048576,
    }


def test_protobuf_has_the_same_values() -> None:
    exposition = Exposition([ProcessSource(PROC, pagesize=4096, ticks=100)])
    text = {s.name: s.value for f in parse_text(exposition.render()) for s in f.samples}
    decoded = {f.name: f for _, f in delimited(exposition.render_protobuf())}
    assert list(decoded) == NAMES
    for family in PROCESS_FAMILIES:
        message = decoded[family.name]
        (metric,) = message.metric
        assert not metric.label
        if family.kind is Kind.COUNTER:
            assert message.type == METRIC_TYPES["COUNTER"]
            assert metric.counter.value == text[family.name]
        else:
            assert message.type == METRIC_TYPES["GAUGE"]
            assert metric.gauge.value == text[family.name]


def test_without_proc_the_families_are_absent(tmp_path: Path) -> None:
    source = ProcessSource(tmp_path / "no-proc")
    assert not source.available
    exposition = Exposition([source])
    assert exposition.render() == ""
    assert exposition.render_protobuf() == b""


def test_odd_proc_files_leave_the_families_without_series(tmp_path: Path) -> None:
    """A stat without its fields, limits without the open files line, no fd directory: the
    scrape still answers, with every family declared and none of them with a sample."""
    (tmp_path / "stat").write_text("btime 1789900000\n")
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "stat").write_text("1 (odd) S 0 1\n")
    (tmp_path / "self" / "limits").write_text("Limit Soft Limit Hard Limit Units\n")
    exposition = Exposition([ProcessSource(tmp_path)])
    families = list(parse_text(exposition.render()))
    assert [f.name for f in families] == [f.base_name for f in PROCESS_FAMILIES]
    assert all(not f.samples for f in families)
    assert exposition.render_protobuf() == b""
    # Mended, the next scrape has them.
    shutil.copy(PROC / "self" / "stat", tmp_path / "self" / "stat")
    families = list(parse_text(exposition.render()))
    assert [f.name for f in families if f.samples] == [
        "process_virtual_memory_bytes", "process_resident_memory_bytes",
        "process_start_time_seconds", "process_cpu_seconds"]  # fmt: skip


def test_start_time_is_when_the_process_started() -> None:
    """Of another process (`pid`), started now: btime has whole seconds, so the start time
    read may be up to a second early, never late."""
    before = time.time()
    child = subprocess.Popen(["sleep", "30"])
    after = time.time()
    try:
        source = ProcessSource(pid=str(child.pid))
        values = {f.family.name: dict(f.series) for f in source.snapshot()}
        start = values["process_start_time_seconds"][()]
        assert before - 1.02 <= start <= after + 0.02, (before, start, after)
        assert values["process_cpu_seconds_total"][()] >= 0
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def served() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    exchanges: list[tuple[str, str]] = []
    with serving(Exposition([ProcessSource()]), exchanges=exchanges) as address:
        yield address, exchanges


@pytest.mark.parametrize("native", [False, True], ids=["classic", "native"])
def test_a_real_prometheus_stores_every_family(
    served: tuple[str, list[tuple[str, str]]], tmp_path: Path, native: bool
) -> None:
    """Scraped as OpenMetrics (classic) or protobuf (native), from this process' /proc: one
    series per family, and the CPU counter's rate is a rate."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed (Debian package prometheus; make system-deps)")
    address, exchanges = served
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1m"},
        "scrape_configs": [{"job_name": "tailwatch", "static_configs": [{"targets": [address]}]}],
    }
    with running_prometheus(tmp_path, config, native_histograms=native) as prometheus:
        wait_until(
            lambda: len(prometheus.query("count_over_time(process_open_fds[1m]) >= 3")) == 1,
            "three scrapes",
            60,
        )
        stored = prometheus.series('{__name__=~"process_.+"}', 0, 4_102_444_800)
        assert sorted(s["__name__"] for s in stored) == sorted(NAMES)
        (rss,) = prometheus.query("process_resident_memory_bytes")
        assert float(rss["value"][1]) > 0
        (cpu,) = prometheus.query("rate(process_cpu_seconds_total[1m])")
        assert float(cpu["value"][1]) >= 0
        (target,) = prometheus.targets()
        assert (target["health"], target["lastError"]) == ("up", "")
    content_types = {content_type for _, content_type in exchanges}
    if native:
        assert {accept for accept, _ in exchanges} == {PROTOBUF_ACCEPT}
        assert content_types == {PROTOBUF_CONTENT_TYPE}
    else:
        assert {t.split(";")[0] for t in content_types} == {"application/openmetrics-text"}
