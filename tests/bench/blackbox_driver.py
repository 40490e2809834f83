"""blackbox_exporter driven as Prometheus drives it, in its own process so the benchmark's
event loop never delays a probe: `python -m tests.bench.blackbox_driver BLACKBOX_URL
INTERVAL_SECONDS TARGET_URL...`.

One scrape loop per target, as Prometheus runs one per target of a blackbox job:
- each loop GETs `/probe?module=http_2xx&target=TARGET_URL` once per interval, starting at
  an offset within the interval taken from a hash of the target (Prometheus'
  `Target.offset`: FNV-1a of the target, modulo the interval, from a wall-clock base), so
  the 45 loops are spread over the interval rather than firing together;
- on its own keep-alive connection, kept from one scrape to the next as Go's HTTP
  transport keeps the scrape client's idle connections (closed only after an error);
- with Prometheus' scrape headers: its Accept and `Accept-Encoding: gzip` (blackbox_exporter
  compresses its answer then, as it does for Prometheus), its User-Agent, and
  `X-Prometheus-Scrape-Timeout-Seconds` (the scrape timeout, which defaults to the interval
  when that is under 10 s): blackbox_exporter shortens its probe timeout to fit it;
- a tick that comes while the previous scrape still runs is dropped (Go's ticker).

Commands on stdin: a line `mark` prints one JSON line with the counts so far (so the
benchmark can take the difference over its own window); closing stdin stops the loops and
prints the final counts. Counts: `scrapes` (answers read), `ok` (HTTP 200 and
`probe_success 1`), `failed`, `dropped` (ticks skipped), `failures` (the first reasons seen),
`probe_seconds` (the sum of blackbox_exporter's own probe_duration_seconds).
"""

from __future__ import annotations

import gzip
import http.client
import json
import sys
import threading
import time
from urllib.parse import urlencode, urlsplit

ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
USER_AGENT = "Prometheus/2.45.0"
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
NS = 1_000_000_000


def fnv1a64(data: bytes) -> int:
    h = FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def first_tick(target: str, interval_ns: int) -> int:
    """The first scrape, in time.monotonic_ns(): Prometheus' offset of the target within
    the interval, counted from the next wall-clock multiple of the interval."""
    now_wall, now_mono = time.time_ns(), time.monotonic_ns()
    base = interval_ns - now_wall % interval_ns
    after = (base + fnv1a64(target.encode()) % interval_ns) % interval_ns
    return now_mono + after


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scrapes = self.ok = self.failed = self.dropped = 0
        self.probe_seconds = 0.0
        self.failures: list[str] = []

    def add(self, ok: bool, probe_seconds: float, reason: str = "") -> None:
        with self.lock:
            self.scrapes += 1
            self.probe_seconds += probe_seconds
            if ok:
                self.ok += 1
            else:
                self.failed += 1
                if len(self.failures) < 10:
                    self.failures.append(reason)

    def drop(self, n: int) -> None:
        with self.lock:
            self.dropped += n

    def json(self) -> str:
        with self.lock:
            return json.dumps({
                "scrapes": self.scrapes, "ok": self.ok, "failed": self.failed,
                "dropped": self.dropped, "probe_seconds": self.probe_seconds,
                "failures": self.failures, "monotonic": time.monotonic(),
            })  # fmt: skip


def scrape_loop(
    base: str, target: str, interval: float, counts: Counts, stop: threading.Event
) -> None:
    parts = urlsplit(base)
    path = "/probe?" + urlencode({"module": "http_2xx", "target": target})
    headers = {
        "Accept": ACCEPT,
        "Accept-Encoding": "gzip",
        "User-Agent": USER_AGENT,
        "X-Prometheus-Scrape-Timeout-Seconds": f"{min(interval, 10.0):g}",
    }
    interval_ns = round(interval * NS)
    tick = first_tick(target, interval_ns)
    conn: http.client.HTTPConnection | None = None
    while not stop.wait(max(0.0, (tick - time.monotonic_ns()) / NS)):
        if conn is None:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=interval)
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            if resp.getheader("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            values = {
                line.split()[0]: float(line.split()[1])
                for line in body.decode().splitlines()
                if line.startswith(("probe_duration_seconds ", "probe_success "))
            }
            ok = resp.status == 200 and values.get("probe_success") == 1
            counts.add(ok, values.get("probe_duration_seconds", 0.0),
                       "" if ok else f"{target}: HTTP {resp.status}, {values}")  # fmt: skip
        except (OSError, http.client.HTTPException) as exc:
            counts.add(False, 0.0, f"{target}: {exc!r}")
            conn.close()
            conn = None
        tick += interval_ns
        late = time.monotonic_ns() - tick
        if late > 0:  # the ticker dropped the ticks that came during the scrape
            skipped = late // interval_ns + 1
            counts.drop(skipped)
            tick += skipped * interval_ns
    if conn is not None:
        conn.close()


def main(base: str, interval: float, targets: list[str]) -> None:
    counts = Counts()
    stop = threading.Event()
    loops = [
        threading.Thread(target=scrape_loop, args=(base, t, interval, counts, stop), daemon=True)
        for t in targets
    ]
    for loop in loops:
        loop.start()
    for line in sys.stdin:
        if line.strip() == "mark":
            print(counts.json(), flush=True)
    stop.set()
    for loop in loops:
        loop.join(interval + 5)
    print(counts.json(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), sys.argv[3:])
