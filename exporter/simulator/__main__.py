"""`python -m exporter.simulator`: serve a simulated API server until Ctrl-C, printing the
kubeconfig that points at it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
from pathlib import Path

import yaml

from exporter.simulator.apiserver import ApiServer
from exporter.simulator.resources import resource_for_kind


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m exporter.simulator", description="Serve a simulated Kubernetes API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token", default="sim-token", help="bearer token; '' disables auth")
    parser.add_argument("--kubeconfig", type=Path, help="where to write the kubeconfig")
    parser.add_argument("--bookmark-interval", type=float, default=1.0)
    parser.add_argument(
        "--history-limit", type=int, default=10_000, help="events kept for watch resumption"
    )
    parser.add_argument(
        "--objects", type=Path, action="append", default=[], help="YAML file of objects to create"
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
    server = ApiServer(
        args.host,
        args.port,
        token=args.token or None,
        bookmark_interval=args.bookmark_interval,
        history_limit=args.history_limit,
    )
    for path in args.objects:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(doc, dict):
                server.store.create(resource_for_kind(str(doc.get("kind"))).plural, doc)
    kubeconfig = args.kubeconfig or Path(tempfile.mkdtemp(prefix="tailwatch-sim-")) / "kubeconfig"
    async with server:
        server.write_kubeconfig(kubeconfig)
        print(f"serving {server.url}", flush=True)
        print(f"kubeconfig: {kubeconfig}", flush=True)
        # Stop on SIGINT or SIGTERM, even when started with SIGINT ignored (a background job
        # of a non-interactive shell inherits that, and would never stop on Ctrl-C's signal).
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
