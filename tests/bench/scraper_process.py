"""A Prometheus-like scraper in its own process, for the benchmarks: its timings are not
delayed by whatever else the benchmark's event loop does (building OTLP bodies, writing
cgroup files). `python -m tests.bench.scraper_process URL INTERVAL_SECONDS [FORMAT]`:
scrapes URL every INTERVAL_SECONDS as Prometheus 2.x does until stdin closes, and prints one
JSON line per scrape: {"seconds": answer time, "status", "bytes", "content_type"}. FORMAT:
`openmetrics` (the default: Prometheus' own Accept header, gzip) or `protobuf` (its header
with --enable-feature=native-histograms, gzip).
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from urllib.parse import urlsplit

ACCEPT = {
    "openmetrics": (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
        "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    ),
    "protobuf": (
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
        "encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,"
        "application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,"
        "*/*;q=0.1"
    ),
}


def main(url: str, interval: float, format: str = "openmetrics") -> None:
    parts = urlsplit(url)
    headers = {"Accept": ACCEPT[format], "Accept-Encoding": "gzip"}
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    next_at = time.monotonic()
    while not stop.is_set():
        # A new connection per scrape, as Prometheus does after an idle interval.
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        t0 = time.perf_counter()
        conn.request("GET", parts.path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        seconds = time.perf_counter() - t0
        conn.close()
        print(json.dumps({"seconds": seconds, "status": resp.status, "bytes": len(body),
                          "content_type": resp.getheader("Content-Type")}), flush=True)  # fmt: skip
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), *sys.argv[3:4])
