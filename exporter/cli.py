"""The `tailwatch` command: `run` (the agent), `demo` (simulated cluster, real agent) and
`generate` (dashboards and rule files)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from exporter import __version__
from exporter.settings import OPTIONS, ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from exporter.kube.config import KubeConnection

EXIT_CONFIG = 2
#: From SIGTERM (or SIGINT) to the process's exit, at most: the agent stops its listeners and
#: tasks in about 1 s whatever its clients are doing (exporter.server.SHUTDOWN_GRACE); a stop
#: still running at this deadline (a thread stuck in a read) is cut short, and the exit is
#: still 0. Under the 5 s the agent promises, and the chart's terminationGracePeriodSeconds.
EXIT_DEADLINE = 4.0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailwatch",
        description="Ties tail latency of Kubernetes Services to pod lifecycle events.",
    )
    parser.add_argument("--version", action="version", version=f"tailwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the node agent",
        description="Run the node agent. Each flag can also be set with TAILWATCH_<FLAG> "
        "in the environment or in the --config YAML file; flags win, then env, then the file.",
    )
    run.add_argument("--config", default=None, help="YAML file of option: value")
    for option in OPTIONS:
        default = f" (default: {option.default})" if option.default else ""
        run.add_argument(f"--{option.name}", default=None, help=option.help + default)

    demo = sub.add_parser(
        "demo",
        help="simulated cluster + the real agent, episodes shown live",
        description="A simulated 3-node cluster with real traffic, the real agent on node-1, "
        "a scripted scenario (rollout, OOM kill, node drain, sidecar CPU burst) and a report "
        "of the episodes the agent found (docs/demo.md).",
    )
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        help="real seconds to run at most, the baseline warm-up (about 30 s) included "
        "(without --speed: the speed that fits the script, at most the maximum speed)",
    )
    demo.add_argument(
        "--speed",
        type=float,
        default=None,
        help="time compression of the scenario and the agent's windows (default: 4, at most "
        "7: faster, the baselines hold too few probes to bound a p99)",
    )
    demo.add_argument("--listen", default="127.0.0.1:9808", help="agent address")
    demo.add_argument("--seed", type=int, default=1, help="random seed of the scenario")
    demo.add_argument(
        "--hold", action="store_true", help="keep serving after the scenario until Ctrl-C"
    )
    demo.add_argument(
        "--report",
        default=None,
        metavar="FILE",
        help="where to write the JSON report (default: ./tailwatch-demo-report.json)",
    )

    generate = sub.add_parser(
        "generate",
        help="write the Grafana dashboards and Prometheus rule files",
        description="Write the dashboards (dashboards/*.json) and rule files (alerts/*.yaml), "
        "with their copies for the Helm chart (helm/tailwatch/files/), under --out.",
    )
    generate.add_argument("what", choices=("dashboards", "alerts", "all"))
    generate.add_argument(
        "--out", required=True, type=Path, help="directory laid out like the repository"
    )
    generate.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file under --out is stale"
    )
    generate.add_argument(
        "--config", type=Path, default=None, help="YAML file of mixin config overrides"
    )
    generate.add_argument(
        "--speed",
        type=float,
        default=None,
        help="compress every window and `for` by this factor (rate windows at least 5s), for "
        "a Prometheus scraping `tailwatch demo --speed` every second",
    )
    return parser


async def _run_agent(settings: Settings, connection: KubeConnection) -> None:
    from exporter.agent import Agent  # noqa: PLC0415 (keeps `tailwatch --help` fast)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not stop.is_set():
            stop.set()
            _exit_after(EXIT_DEADLINE)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await Agent(settings, connection=connection).run(stop)


def _exit_after(seconds: float) -> None:
    """Exit with 0 in `seconds` if the process has not exited by then. A daemon thread, so
    that it neither keeps the process alive nor depends on the event loop, which may be
    what is stuck."""

    def force() -> None:
        logging.getLogger("tailwatch.agent").warning(
            "shutdown still running after %gs: exiting now", seconds
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(0)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "generate":
        from exporter.mixin.generate import run  # noqa: PLC0415 (never loaded by the agent)

        return run(args.what, args.out, check=args.check, config_file=args.config, speed=args.speed)
    if args.command == "demo":
        from exporter.demo import run_demo  # noqa: PLC0415

        return run_demo(
            duration=args.duration,
            listen=args.listen,
            seed=args.seed,
            hold=args.hold,
            speed=args.speed,
            report=args.report,
        )

    from exporter.kube.config import KubeConfigError, load_connection  # noqa: PLC0415
    from exporter.logs import configure_logging  # noqa: PLC0415

    flags = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = load_settings(flags, os.environ)
        # Fail fast on a kubeconfig that cannot be used: that is configuration, not an outage.
        connection = load_connection(settings.kubeconfig)
    except (ConfigError, KubeConfigError) as exc:
        print(f"tailwatch: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level)
    from exporter.server import ListenError  # noqa: PLC0415

    try:
        asyncio.run(_run_agent(settings, connection))
    except ListenError as exc:
        print(f"tailwatch: error: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # found once running: --tls-cert-file/--tls-key-file (TlsError)
        print(f"tailwatch: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0
