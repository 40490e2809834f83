"""/metrics of an `Exposition` on a loopback port, from a thread: for the tests and
benchmarks where a real Prometheus scrapes it (which blocks, so not on the event loop)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from exporter.exposition import Exposition


@contextmanager
def serving(
    exposition: Exposition,
    *,
    lock: threading.Lock | None = None,
    exchanges: list[tuple[str, str]] | None = None,
) -> Iterator[str]:
    """Serve `exposition.answer` at http://<yielded host:port>/ (any path). `lock` is held
    while an answer is made (against a writer of the sources); `exchanges` gets the Accept
    header of each scrape with the content type of its answer."""

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            accept = self.headers.get("Accept", "")
            with lock or contextlib.nullcontext():
                answer = exposition.answer(accept, self.headers.get("Accept-Encoding", ""))
            if exchanges is not None:
                exchanges.append((accept, answer.content_type))
            self.send_response(200)
            self.send_header("Content-Type", answer.content_type)
            if answer.gzipped:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
