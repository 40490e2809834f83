"""Where the agent's CPU goes, from a py-spy profile: `python -m tests.bench.profile_summary
AGENT.raw RATE SECONDS [CPU_SHARE]` prints the share of samples per area of the agent and the top
functions (test_agent_cost.py runs it on the profile it records with TAILWATCH_PROFILE).

The input is py-spy's `--format raw --threads` output: one line per distinct stack, the
thread first, then the frames from the root to the leaf (`function (file:line)`), then the
number of samples. py-spy (`--nonblocking`) counts only the samples where it saw a thread
running, but it takes a thread that is runnable and waiting for a CPU for a running one: on
a busy machine many samples of a thread just woken from `select` or a queue are counted.
Those stacks, whose leaf is a blocking wait (`_WAITS`), are left out, and the rest shares
out the agent's CPU as measured from /proc over the same window (CPU_SHARE, a share of one
core), or samples / (rate x seconds) without it.

A stack belongs to the area of the frame nearest its leaf that is in one of the agent's own
areas (`AREAS`): the correlation core called from the prober's result hand-over is
correlation, the histogram code is whoever called it, and the wake-ups of a task are the
cost of the area whose task it is. A stack with no such frame is aiohttp's HTTP serving of
both listeners (request parsing before a handler runs), the event loop's and the threads'
own work (`_run_once`, selectors, futures, queues), or "other". For each area the summary
also tells how much of it ends in the event loop's or the threads' machinery (the cost of
wake-ups and hand-offs within it).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

PROBES = "probes"
OTLP = "OTLP decode and ingest"
CGROUPS = "cgroup sampling"
CORRELATION = "correlation"
EXPOSITION = "exposition and scrapes"
WATCHES = "API watches"
HTTP = "HTTP serving (aiohttp, both listeners)"
LOOP = "event loop and hand-offs"
OTHER = "other"

# (area, file pattern, function pattern or None): a frame is in the area when its file
# matches (anywhere in the path py-spy prints) and, if given, its function name does too.
# Files not named here (core/histogram.py, core/buckets.py, metrics.py's recorders, the
# libraries: gzip, protobuf, yaml) belong to whoever calls them.
AREAS: list[tuple[str, str, str | None]] = [
    # What is read at scrape time: first, since the adapters' source.py files sit in their
    # packages (exporter/probe/source.py is exposition, not probes).
    (EXPOSITION, r"exporter/(exposition|catalogue)\.py", None),
    (EXPOSITION, r"exporter/(\w+/)?source\.py", None),
    (EXPOSITION, r"exporter/metrics\.py", r"snapshot"),
    (EXPOSITION, r"exporter/server\.py", r"^metrics$"),
    (PROBES, r"exporter/probe/", None),
    (PROBES, r"exporter/core/probing\.py", None),
    (PROBES, r"exporter/agent\.py", r"_on_probe_result"),
    (OTLP, r"exporter/otlp/", None),
    (OTLP, r"exporter/agent\.py", r"_on_client_delta"),
    (CGROUPS, r"exporter/cgroups/", None),
    (CGROUPS, r"exporter/agent\.py", r"_sample_cgroups|_sample_pass|_on_sample_pass"),
    (
        CORRELATION,
        r"exporter/core/(correlation|episodes|tails|windows|attribution|rules|quantiles"
        r"|restore|rollouts|sidecars)\.py",
        None,
    ),
    (CORRELATION, r"exporter/agent\.py", r"_correlate|_on_episode_change|_on_rollout"),
    (CORRELATION, r"exporter/kube/events\.py", None),
    (WATCHES, r"exporter/kube/|exporter/watches\.py", None),
    (WATCHES, r"exporter/core/(catalog|endpoints|lifecycle|nodes|pods|peers|services)\.py", None),
    (WATCHES, r"exporter/agent\.py", r"_update_service|_services_changed|_peer|_forget"),
]
_AREAS = [(area, re.compile(f), re.compile(fn) if fn else None) for area, f, fn in AREAS]
_HTTP = re.compile(r"aiohttp/(web_|http_|streams|base_protocol)|exporter/server\.py")
_LOOP = re.compile(
    r"asyncio/|selectors\.py|threading\.py|concurrent/futures|queue\.py|uvloop|"
    r"exporter/runtime\.py"
)
# Leaves that are a thread blocked, not working: (file, function).
_WAITS = [
    (re.compile(p), re.compile(f))
    for p, f in [
        (r"selectors\.py", r"select$"),
        (r"threading\.py", r"wait|_wait_for_tstate_lock|join"),
        (r"concurrent/futures/thread\.py", r"^_worker$"),  # its work_queue.get()
        (r"exporter/otlp/receiver\.py", r"_DaemonWorker\._run$"),  # its queue.get()
        (r"queue\.py", r"get$"),
    ]
]
_C_LOOP = ("Runner.run (", "BaseEventLoop.run_until_complete (", "run_until_complete (")
_THREAD_ID = re.compile(r"^thread \((0x)?[0-9A-Fa-f]+\):?\s*")  # "thread (123): name"
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Frame:
    function: str
    file: str

    @property
    def name(self) -> str:
        return f"{self.function} ({self.file})"


def parse_frame(text: str) -> Frame:
    found = _FRAME.match(text)
    if found is None:
        return Frame(text, "")
    return Frame(found["function"], found["file"].replace("\\", "/"))


def parse(raw: str) -> Iterable[tuple[str, list[Frame], int]]:
    """(thread, frames root to leaf, samples) of every line of a raw profile."""
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parts = stack.split(";")
        thread = ""
        while parts and parts[0].startswith(("thread ", "process ")):
            thread = parts.pop(0)
        yield thread, [parse_frame(p) for p in parts], int(count)


def area_of(frames: list[Frame]) -> str:
    for frame in reversed(frames):
        for area, file, function in _AREAS:
            if file.search(frame.file) and (function is None or function.search(frame.function)):
                return area
    if any(_HTTP.search(f.file) for f in frames):
        return HTTP
    if any(_LOOP.search(f.file) for f in frames):
        return LOOP
    return OTHER


def waiting(frames: list[Frame]) -> bool:
    """A stack whose leaf is a blocking wait: the event loop's select, a worker thread's
    queue get, a lock or condition wait."""
    return bool(frames) and any(
        file.search(frames[-1].file) and function.search(frames[-1].function)
        for file, function in _WAITS
    )


def summarize(
    raw: str, rate: float, seconds: float, cpu_share: float | None = None, top: int = 25
) -> str:
    """The report. `cpu_share`, the agent's measured CPU over the same window (utime +
    stime, share of one core), turns each area's share of the samples into a share of a
    core; without it the samples per second stand in for it."""
    areas: Counter[str] = Counter()
    machinery: Counter[str] = Counter()  # of which the leaf is in the loop or thread code
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = waits = 0
    for thread, frames, count in parse(raw):
        if waiting(frames):
            waits += count
            continue
        total += count
        area = area_of(frames)
        areas[area] += count
        if frames and _LOOP.search(frames[-1].file):
            machinery[area] += count
        threads[_THREAD_ID.sub("", thread) or "?"] += count
        for name in {f.name for f in frames}:
            inclusive[name] += count
        if frames:
            leaf[frames[-1].name] += count
    if total == 0:
        return "no samples (py-spy saw the agent idle, or could not read it)\n"
    core = rate * seconds  # samples of one core busy for the whole window
    scale = (cpu_share / total) if cpu_share is not None else 1 / core  # core share per sample

    def pct(n: int) -> str:
        return f"{n / total * 100:5.1f}% of samples, ~{n * scale * 100:5.2f}% of a core"

    basis = (
        f"the agent's measured CPU over the window, {cpu_share * 100:.2f}% of one core, "
        "shared out in proportion to the samples"
        if cpu_share is not None
        else "samples / (rate x seconds)"
    )
    lines = [
        f"{total + waits} samples at {rate:g}/s over {seconds:g} s; {waits} of them end in a "
        "blocking wait (select, a queue or lock) and are left out: py-spy counts a thread "
        "that is runnable but waiting for a CPU as running, which a busy machine inflates. "
        f"{total} samples remain; share of a core: {basis}.",
        "",
        "| area | samples | share of samples | ~share of a core | of which wake-ups and "
        "hand-offs (leaf in asyncio, selectors, threading, futures, queues, the router) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for area, n in areas.most_common():
        lines.append(
            f"| {area} | {n} | {n / total * 100:.1f}% | {n * scale * 100:.2f}% | "
            f"{machinery[area] / n * 100:.0f}% |"
        )
    in_c_loop = sum(n for name, n in leaf.items() if name.startswith(_C_LOOP))
    if in_c_loop:
        lines += [
            "",
            f"{in_c_loop} samples ({in_c_loop / total * 100:.1f}%) end in the loop's runner: "
            "with uvloop that is the event loop's own C code (its timers, callbacks and "
            "socket I/O, and the moments after a wake-up), which py-spy cannot see into.",
        ]
    lines += ["", "threads:"]
    lines += [f"  {pct(n)}  {name}" for name, n in threads.most_common()]
    lines += ["", f"top {top} functions, inclusive (the function and what it calls):"]
    lines += [f"  {pct(n)}  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", f"top {top} functions, self (the leaf of the stack):"]
    lines += [f"  {pct(n)}  {name}" for name, n in leaf.most_common(top)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        share = float(sys.argv[4]) if len(sys.argv) > 4 else None
        print(summarize(f.read(), float(sys.argv[2]), float(sys.argv[3]), share), end="")
