"""The pure parsers on file contents exactly as kernels write them."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.cgroups.parse import (
    CgroupParseError,
    keyed_value,
    parse_cpu_stat_v2,
    parse_cpu_v1,
    parse_flat_keyed,
    parse_int,
    parse_oom_kills_v1,
    parse_oom_kills_v2,
    parse_pressure,
    parse_v1_limit,
    parse_v2_limit,
    parse_working_set_v1,
    parse_working_set_v2,
    working_set,
)

# --- real contents ------------------------------------------------------------------------
# cgroup v1 and the hybrid unified tree: copied from a 6.18 kernel host (cpu and cpuacct
# mounted apart, cgroup2 at unified/).
V1_CPU_STAT_618 = b"nr_periods 0\nnr_throttled 0\nthrottled_time 0\nnr_bursts 0\nburst_time 0\n"
V1_CPU_STAT_THROTTLED_318 = b"nr_periods 5123\nnr_throttled 1847\nthrottled_time 93017465871\n"
V1_CPUACCT_USAGE = b"130586041102\n"
V1_LIMIT_UNLIMITED = b"9223372036854771712\n"
V1_OOM_CONTROL_618 = b"oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"
V1_OOM_CONTROL_310 = b"oom_kill_disable 0\nunder_oom 0\n"
V1_MEMORY_STAT_618 = b"""cache 9850880
rss 6225920
rss_huge 0
shmem 9068544
mapped_file 7651328
dirty 12288
writeback 0
workingset_refault_anon 0
workingset_refault_file 202
swap 0
swapcached 0
pgpgin 37697
pgpgout 33772
pgfault 41318
pgmajfault 0
inactive_anon 0
active_anon 1531904
inactive_file 45056
active_file 737280
unevictable 13762560
hierarchical_memory_limit 9223372036854771712
hierarchical_memsw_limit 9223372036854771712
total_cache 205369344
total_rss 11415552
total_rss_huge 0
total_shmem 9068544
total_mapped_file 11214848
total_dirty 434176
total_writeback 0
total_workingset_refault_anon 0
total_workingset_refault_file 88386
total_swap 0
total_swapcached 0
total_pgpgin 1828533
total_pgpgout 1779237
total_pgfault 2003689
total_pgmajfault 1017
total_inactive_anon 5029888
total_active_anon 1572864
total_inactive_file 86892544
total_active_file 109408256
total_unevictable 13762560
"""
V1_MEMORY_USAGE = b"216616960\n"
UNIFIED_CPU_STAT_NO_CONTROLLER = (
    b"usage_usec 127194030\nuser_usec 95124883\nsystem_usec 32069147\nnice_usec 0\n"
)
UNIFIED_CPU_PRESSURE = (
    b"some avg10=0.00 avg60=0.00 avg300=0.19 total=5990084\n"
    b"full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
)
UNIFIED_IO_PRESSURE = (
    b"some avg10=0.00 avg60=0.02 avg300=0.08 total=2540706\n"
    b"full avg10=0.00 avg60=0.02 avg300=0.06 total=2353494\n"
)

# cgroup v2 with controllers (kernel 6.x with CONFIG_SCHED_CORE, as systemd slices show).
V2_CPU_STAT = b"""usage_usec 143705640
user_usec 25237222
system_usec 118468417
nice_usec 8000
core_sched.force_idle_usec 0
nr_periods 2310
nr_throttled 412
throttled_usec 18250331
nr_bursts 0
burst_usec 0
"""
V2_CPU_STAT_510 = b"""usage_usec 61000000
user_usec 42700000
system_usec 18300000
nr_periods 0
nr_throttled 0
throttled_usec 0
"""
V2_MEMORY_EVENTS = b"low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n"
V2_MEMORY_EVENTS_515 = b"low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\n"
V2_MEMORY_STAT = b"""anon 4795621376
file 569593856
kernel 167936000
kernel_stack 81346560
pagetables 42930176
sec_pagetables 0
percpu 126200
sock 0
vmalloc 1236992
shmem 560095232
zswap 0
zswapped 0
file_mapped 491581440
file_dirty 0
file_writeback 0
swapcached 6160384
anon_thp 3059744768
file_thp 0
shmem_thp 0
inactive_anon 2696347648
active_anon 2665529344
inactive_file 1589248
active_file 7909376
unevictable 0
slab_reclaimable 4199912
slab_unreclaimable 32974328
slab 37174240
workingset_refault_anon 5330
workingset_refault_file 617749399
pgfault 717480824
pgmajfault 22092074
"""
V2_MEMORY_CURRENT = b"5534044160\n"
CPU_PRESSURE_PRE_513 = b"some avg10=1.52 avg60=0.80 avg300=0.21 total=8322141\n"


def test_v1_cpuacct_usage_is_nanoseconds_and_v2_usage_is_microseconds() -> None:
    v1 = parse_cpu_v1(V1_CPUACCT_USAGE, V1_CPU_STAT_618)
    assert v1.usage_seconds == pytest.approx(130.586041102)
    v2 = parse_cpu_stat_v2(V2_CPU_STAT)
    assert v2.usage_seconds == pytest.approx(143.70564)


def test_v2_cpu_stat_throttling() -> None:
    cpu = parse_cpu_stat_v2(V2_CPU_STAT)
    assert (cpu.periods, cpu.throttled_periods) == (2310, 412)
    assert cpu.throttled_seconds == pytest.approx(18.250331)
    old = parse_cpu_stat_v2(V2_CPU_STAT_510)
    assert (old.usage_seconds, old.periods, old.throttled_seconds) == (61.0, 0, 0.0)


def test_v2_cpu_stat_without_cpu_controller_has_usage_only() -> None:
    # The hybrid layout's unified tree (or a v2 cgroup whose parent did not enable cpu).
    cpu = parse_cpu_stat_v2(UNIFIED_CPU_STAT_NO_CONTROLLER)
    assert cpu.usage_seconds == pytest.approx(127.19403)
    assert (cpu.periods, cpu.throttled_periods, cpu.throttled_seconds) == (None, None, None)


def test_v1_cpu_stat_throttled_time_is_nanoseconds() -> None:
    cpu = parse_cpu_v1(b"1000000000\n", V1_CPU_STAT_THROTTLED_318)
    assert (cpu.periods, cpu.throttled_periods) == (5123, 1847)
    assert cpu.throttled_seconds == pytest.approx(93.017465871)


def test_v1_cpu_with_a_controller_missing() -> None:
    assert parse_cpu_v1(V1_CPUACCT_USAGE, None).periods is None
    cpu = parse_cpu_v1(None, V1_CPU_STAT_THROTTLED_318)
    assert cpu.usage_seconds is None
    assert cpu.throttled_periods == 1847


def test_limits() -> None:
    assert parse_v2_limit(b"max\n") is None
    assert parse_v2_limit(b"536870912\n") == 536870912
    assert parse_v1_limit(V1_LIMIT_UNLIMITED) is None
    assert parse_v1_limit(b"9223372036854710272\n") is None  # 64 KiB pages
    assert parse_v1_limit(b"268435456\n") == 268435456


def test_working_set_like_the_kubelet() -> None:
    # v1 uses the hierarchical total_inactive_file, not inactive_file.
    assert parse_working_set_v1(V1_MEMORY_USAGE, V1_MEMORY_STAT_618) == 216616960 - 86892544
    assert parse_working_set_v2(V2_MEMORY_CURRENT, V2_MEMORY_STAT) == 5534044160 - 1589248
    assert working_set(100, 300) == 0  # read at different instants: floored, never negative
    assert working_set(100, None) == 100


def test_oom_kills() -> None:
    assert parse_oom_kills_v2(V2_MEMORY_EVENTS) == 1
    assert parse_oom_kills_v2(V2_MEMORY_EVENTS_515) == 2
    assert parse_oom_kills_v1(V1_OOM_CONTROL_618) == 0
    assert parse_oom_kills_v1(b"oom_kill_disable 0\nunder_oom 0\noom_kill 7\n") == 7
    # Before 4.13 the kernel kept no count: "cannot tell", not zero.
    assert parse_oom_kills_v1(V1_OOM_CONTROL_310) is None


def test_pressure() -> None:
    cpu = parse_pressure(UNIFIED_CPU_PRESSURE)
    assert (cpu.some_seconds, cpu.full_seconds) == (pytest.approx(5.990084), 0.0)
    io = parse_pressure(UNIFIED_IO_PRESSURE)
    assert io.full_seconds == pytest.approx(2.353494)
    old = parse_pressure(CPU_PRESSURE_PRE_513)
    assert old.some_seconds == pytest.approx(8.322141)
    assert old.full_seconds is None


def test_flat_keyed() -> None:
    assert parse_flat_keyed(V2_MEMORY_EVENTS)["oom_group_kill"] == 0
    assert keyed_value(V1_MEMORY_STAT_618, "inactive_file") == 45056
    assert keyed_value(V1_MEMORY_STAT_618, "total_inactive_file") == 86892544
    assert keyed_value(V1_MEMORY_STAT_618, "cache") == 9850880  # first line
    assert keyed_value(V1_MEMORY_STAT_618, "no_such_key") is None


@pytest.mark.parametrize(
    ("parse", "data"),
    [
        (parse_int, b""),
        (parse_int, b"12345"),  # cut before the newline
        (parse_int, b"-1\n"),
        (parse_int, b"garbage\n"),
        (parse_v2_limit, b"ma"),
        (parse_cpu_stat_v2, b""),
        (parse_cpu_stat_v2, b"user_usec 1\n"),
        (parse_cpu_stat_v2, b"usage_usec 12\nuser_us"),  # torn: usage_usec present, rest cut
        (parse_cpu_stat_v2, b"usage_usec 12x\n"),
        (parse_cpu_stat_v2, b"usage_usec 12\n"),  # torn at a line end
        (parse_cpu_stat_v2, V2_CPU_STAT[: V2_CPU_STAT.index(b"nr_throttled")]),
        (parse_oom_kills_v2, b"low 0\nhigh 0\nmax 0\noom 0\n"),
        (parse_oom_kills_v1, b"oom_kill 1\n"),
        (parse_pressure, b""),
        (parse_pressure, b"some avg10=0.00 avg60=0.00 avg300=0.00 total=\n"),
        (parse_pressure, b"full avg10=0.00 avg60=0.00 avg300=0.00 total=5\n"),
        (parse_pressure, b"some avg10=0.00 avg60=0.00 avg300=0.00 total=5"),
        (parse_flat_keyed, b"a 1\nb\n"),
    ],
)
def test_cut_or_unexpected_content_is_a_parse_error(parse: object, data: bytes) -> None:
    assert callable(parse)
    with pytest.raises(CgroupParseError):
        parse(data)


def test_torn_memory_stat_is_a_parse_error() -> None:
    torn = V2_MEMORY_STAT[: V2_MEMORY_STAT.index(b"inactive_file") + 16]
    with pytest.raises(CgroupParseError):
        parse_working_set_v2(V2_MEMORY_CURRENT, torn)
    with pytest.raises(CgroupParseError):
        parse_working_set_v2(V2_MEMORY_CURRENT, b"anon 1\nfile 2\n")


@given(st.binary(max_size=200))
def test_parsers_only_ever_raise_parse_errors(data: bytes) -> None:
    for parse in (
        parse_int,
        parse_v1_limit,
        parse_v2_limit,
        parse_cpu_stat_v2,
        parse_oom_kills_v1,
        parse_oom_kills_v2,
        parse_pressure,
        parse_flat_keyed,
    ):
        with contextlib.suppress(CgroupParseError):
            parse(data)
    for stat in (data, V1_MEMORY_STAT_618 + data):
        with contextlib.suppress(CgroupParseError):
            parse_working_set_v1(V1_MEMORY_USAGE, stat)
        with contextlib.suppress(CgroupParseError):
            parse_cpu_v1(data, data)
