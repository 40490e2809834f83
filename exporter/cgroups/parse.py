"""Pure parsers for the cgroup files the sampler reads: file bytes in, values out, no I/O.

Every function takes the bytes of one file exactly as the kernel writes it and raises
`CgroupParseError` on anything it does not recognise (an empty file, a cut-off line, a
word where a number belongs), so a torn or unexpected read is counted, never guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# memory.limit_in_bytes (v1) reports "no limit" as PAGE_COUNTER_MAX pages in bytes: LONG_MAX
# rounded down to the page size (9223372036854771712 with 4 KiB pages, ...710272 with 64 KiB).
# Nothing real comes near 2**62 bytes, so anything above it means "unlimited".
V1_UNLIMITED_THRESHOLD = 1 << 62

# Divide, not multiply by 1e-6: division is correctly rounded, so 61_000_000 µs is 61.0 s.
USEC_PER_SECOND = 1e6
NSEC_PER_SECOND = 1e9


class CgroupParseError(ValueError):
    """A cgroup file whose content is not what the kernel writes."""


@dataclass(frozen=True, slots=True)
class CpuCounters:
    """CPU time and CFS bandwidth counters of one cgroup, in seconds and periods.

    The period counters are None when the kernel does not report them (cgroup v2 without
    the cpu controller enabled for the cgroup, or a v1 host without the cpu controller).
    """

    usage_seconds: float | None
    periods: int | None = None
    throttled_periods: int | None = None
    throttled_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class PressureTotals:
    """PSI totals of one resource: time some / all non-idle tasks were stalled, in seconds.

    `full` is None when the file has no `full` line (cpu.pressure before kernel 5.13).
    """

    some_seconds: float
    full_seconds: float | None


def _int(raw: bytes, what: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise CgroupParseError(f"{what}: not an integer: {raw[:40]!r}") from None
    if value < 0:
        raise CgroupParseError(f"{what}: negative value {value}")
    return value


def parse_int(data: bytes) -> int:
    """A single-value file: `memory.current`, `memory.usage_in_bytes`, `cpuacct.usage`."""
    if not data.endswith(b"\n"):
        # The kernel always ends the value with a newline; without it the read was cut.
        raise CgroupParseError(f"unterminated value: {data[:40]!r}")
    return _int(data, "value")


def parse_v2_limit(data: bytes) -> int | None:
    """`memory.max` (v2): bytes, or None for `max` (no limit)."""
    if data == b"max\n":
        return None
    return parse_int(data)


def parse_v1_limit(data: bytes) -> int | None:
    """`memory.limit_in_bytes` (v1): bytes, or None for the kernel's "unlimited" value."""
    value = parse_int(data)
    return None if value >= V1_UNLIMITED_THRESHOLD else value


def _terminated(data: bytes, what: str) -> None:
    # The kernel ends every line with a newline; a file that does not was cut mid-line.
    if not data.endswith(b"\n"):
        raise CgroupParseError(f"{what}: cut off: {data[-40:]!r}")


def _needle(key: str) -> tuple[bytes, bytes]:
    k = key.encode() + b" "
    return k, b"\n" + k


def keyed_value(data: bytes, key: str | tuple[bytes, bytes]) -> int | None:
    """The value of `key` in a flat-keyed file (`key value` lines), None if the key is absent.

    Finds the one line it needs instead of splitting the whole file: memory.stat has 40 to 60
    lines and the sampler reads it for every container every second.
    """
    first, inner = _needle(key) if isinstance(key, str) else key
    if data.startswith(first):
        start = len(first)
    else:
        at = data.find(inner)
        if at < 0:
            return None
        start = at + len(inner)
    end = data.find(b"\n", start)
    if end < 0:
        raise CgroupParseError(f"{first.decode().strip()}: unterminated line")
    return _int(data[start:end], first.decode().strip())


def parse_flat_keyed(data: bytes) -> dict[str, int]:
    """Every `key value` line of a flat-keyed file (cpu.stat, memory.events, ...)."""
    _terminated(data, "flat-keyed file")
    out: dict[str, int] = {}
    for line in data.splitlines():
        key, sep, value = line.partition(b" ")
        if not sep or not key:
            raise CgroupParseError(f"not a 'key value' line: {line[:60]!r}")
        out[key.decode("ascii", "replace")] = _int(value, key.decode("ascii", "replace"))
    return out


_USAGE_USEC = _needle("usage_usec")
_USER_USEC = _needle("user_usec")
_SYSTEM_USEC = _needle("system_usec")
_NR_PERIODS = _needle("nr_periods")
_NR_THROTTLED = _needle("nr_throttled")
_THROTTLED_USEC = _needle("throttled_usec")
_THROTTLED_TIME = _needle("throttled_time")


# Fast paths for the layouts every kernel since 4.x writes (the sampler parses these for every
# container every second); anything else goes through the key-by-key path.
_CPU_V2_HEAD = re.compile(rb"usage_usec (\d+)\nuser_usec \d+\nsystem_usec \d+\n")
_CPU_V2_CFS = re.compile(rb"\nnr_periods (\d+)\nnr_throttled (\d+)\nthrottled_usec (\d+)\n")
_CPU_V1 = re.compile(rb"nr_periods (\d+)\nnr_throttled (\d+)\nthrottled_time (\d+)\n")


# What the sampler keeps of a cpu.stat: (usage seconds, periods, throttled periods, throttled
# seconds), the fields of `CpuCounters` as a plain tuple. The sampler parses one of these per
# container per pass, and a frozen dataclass costs a microsecond to build, a tuple nothing.
CpuFields = tuple[float | None, int | None, int | None, float | None]
NO_CPU: CpuFields = (None, None, None, None)


def parse_cpu_stat_v2(data: bytes) -> CpuCounters:
    """`cpu.stat` (v2): usage_usec always; nr_periods, nr_throttled, throttled_usec only
    where the cpu controller is enabled for the cgroup (the kubelet always enables it)."""
    return CpuCounters(*cpu_stat_v2_fields(data))


def cpu_stat_v2_fields(data: bytes) -> CpuFields:
    """`parse_cpu_stat_v2` as a `CpuFields` tuple (the sampler's form)."""
    if data[-1:] != b"\n":
        _terminated(data, "cpu.stat")
    head = _CPU_V2_HEAD.match(data)
    if head is not None:
        cfs = _CPU_V2_CFS.search(data, head.end() - 1)
        if cfs is not None:
            return (
                int(head[1]) / USEC_PER_SECOND,
                int(cfs[1]),
                int(cfs[2]),
                int(cfs[3]) / USEC_PER_SECOND,
            )
        if data.find(b"\nnr_periods ") < 0:
            return (int(head[1]) / USEC_PER_SECOND, None, None, None)
    usage = keyed_value(data, _USAGE_USEC)
    if (
        usage is None
        or keyed_value(data, _USER_USEC) is None
        or keyed_value(data, _SYSTEM_USEC) is None
    ):
        raise CgroupParseError("cpu.stat: usage_usec, user_usec or system_usec missing")
    periods = keyed_value(data, _NR_PERIODS)
    if periods is None:
        return (usage / USEC_PER_SECOND, None, None, None)
    throttled_periods = keyed_value(data, _NR_THROTTLED)
    throttled = keyed_value(data, _THROTTLED_USEC)
    if throttled_periods is None or throttled is None:
        raise CgroupParseError("cpu.stat: nr_periods without nr_throttled or throttled_usec")
    return (usage / USEC_PER_SECOND, periods, throttled_periods, throttled / USEC_PER_SECOND)


def parse_cpu_v1(cpuacct_usage: bytes | None, cpu_stat: bytes | None) -> CpuCounters:
    """v1: `cpuacct.usage` (ns, cpuacct controller) and `cpu.stat` (cpu controller:
    nr_periods, nr_throttled, throttled_time in ns). Either may be missing."""
    return CpuCounters(*cpu_v1_fields(cpuacct_usage, cpu_stat))


def cpu_v1_fields(cpuacct_usage: bytes | None, cpu_stat: bytes | None) -> CpuFields:
    """`parse_cpu_v1` as a `CpuFields` tuple (the sampler's form)."""
    usage = None if cpuacct_usage is None else parse_int(cpuacct_usage) / NSEC_PER_SECOND
    if cpu_stat is None:
        return (usage, None, None, None)
    _terminated(cpu_stat, "cpu.stat")
    fast = _CPU_V1.match(cpu_stat)
    if fast is not None:
        return (usage, int(fast[1]), int(fast[2]), int(fast[3]) / NSEC_PER_SECOND)
    periods = keyed_value(cpu_stat, _NR_PERIODS)
    throttled_periods = keyed_value(cpu_stat, _NR_THROTTLED)
    throttled = keyed_value(cpu_stat, _THROTTLED_TIME)
    if periods is None or throttled_periods is None or throttled is None:
        raise CgroupParseError("cpu.stat: nr_periods, nr_throttled or throttled_time missing")
    return (usage, periods, throttled_periods, throttled / NSEC_PER_SECOND)


_INACTIVE_FILE = _needle("inactive_file")
_TOTAL_INACTIVE_FILE = _needle("total_inactive_file")


def working_set(usage: int, inactive_file: int | None) -> int:
    """Memory working set as the kubelet (cAdvisor) computes it: usage minus inactive file
    pages, floored at zero (the two are read at slightly different instants)."""
    if inactive_file is None:
        return usage
    return usage - inactive_file if usage > inactive_file else 0


def parse_inactive_file_v2(memory_stat: bytes) -> int:
    """v2 `memory.stat`: `inactive_file`, the file pages the kubelet does not count."""
    _terminated(memory_stat, "memory.stat")
    inactive = keyed_value(memory_stat, _INACTIVE_FILE)
    if inactive is None:
        raise CgroupParseError("memory.stat: no inactive_file")
    return inactive


def parse_inactive_file_v1(memory_stat: bytes) -> int:
    """v1 `memory.stat`: `total_inactive_file` (hierarchical, as cAdvisor uses on v1)."""
    _terminated(memory_stat, "memory.stat")
    inactive = keyed_value(memory_stat, _TOTAL_INACTIVE_FILE)
    if inactive is None:
        raise CgroupParseError("memory.stat: no total_inactive_file")
    return inactive


def parse_working_set_v2(memory_current: bytes, memory_stat: bytes) -> int:
    """v2: `memory.current` minus `inactive_file` of `memory.stat`."""
    return working_set(parse_int(memory_current), parse_inactive_file_v2(memory_stat))


def parse_working_set_v1(usage_in_bytes: bytes, memory_stat: bytes) -> int:
    """v1: `memory.usage_in_bytes` minus `total_inactive_file` of `memory.stat` (the
    hierarchical value, as cAdvisor uses on v1; `inactive_file` is this cgroup alone)."""
    return working_set(parse_int(usage_in_bytes), parse_inactive_file_v1(memory_stat))


_OOM_KILL = _needle("oom_kill")


def parse_oom_kills_v2(memory_events: bytes) -> int:
    """`memory.events` (v2): the `oom_kill` count (processes of this cgroup and, unless the
    hierarchy is mounted with memory_localevents, of its descendants, killed by the OOM killer)."""
    _terminated(memory_events, "memory.events")
    value = keyed_value(memory_events, _OOM_KILL)
    if value is None:
        raise CgroupParseError("memory.events: no oom_kill")
    return value


_UNDER_OOM = _needle("under_oom")


def parse_oom_kills_v1(oom_control: bytes) -> int | None:
    """`memory.oom_control` (v1): the `oom_kill` count, or None on kernels before 4.13,
    which write only `oom_kill_disable` and `under_oom` and keep no count of kills."""
    _terminated(oom_control, "memory.oom_control")
    if keyed_value(oom_control, _UNDER_OOM) is None:
        raise CgroupParseError("memory.oom_control: no under_oom")
    return keyed_value(oom_control, _OOM_KILL)


_PSI = re.compile(
    rb"some avg10=[\d.]+ avg60=[\d.]+ avg300=[\d.]+ total=(\d+)\n"
    rb"(?:full avg10=[\d.]+ avg60=[\d.]+ avg300=[\d.]+ total=(\d+)\n)?"
)


def _total(line: bytes, what: str) -> int:
    # "some avg10=0.00 avg60=0.00 avg300=0.00 total=123": total is the last field, in µs.
    at = line.rfind(b" total=")
    if at < 0:
        raise CgroupParseError(f"{what}: no total= field: {line[:60]!r}")
    return _int(line[at + 7 :], what)


def parse_pressure(data: bytes) -> PressureTotals:
    """A PSI file (`cpu.pressure`, `memory.pressure`, `io.pressure`): the `some` and `full`
    totals (µs in the file, seconds here)."""
    return PressureTotals(*pressure_fields(data))


def pressure_fields(data: bytes) -> tuple[float, float | None]:
    """`parse_pressure` as a (some, full) tuple (the sampler's form)."""
    fast = _PSI.fullmatch(data)
    if fast is not None:
        full_total = fast[2]
        return (
            int(fast[1]) / USEC_PER_SECOND,
            None if full_total is None else int(full_total) / USEC_PER_SECOND,
        )
    _terminated(data, "pressure file")
    some: int | None = None
    full: int | None = None
    for line in data.splitlines():
        if line.startswith(b"some "):
            some = _total(line, "some")
        elif line.startswith(b"full "):
            full = _total(line, "full")
        else:
            raise CgroupParseError(f"unexpected pressure line: {line[:60]!r}")
    if some is None:
        raise CgroupParseError("pressure file without a 'some' line")
    return (some / USEC_PER_SECOND, None if full is None else full / USEC_PER_SECOND)
