"""The `tailwatch` command: `run` (the agent), `demo` (simulated cluster, real agent),
`generate` (dashboards and rule files) and `episodes` (the cluster's episodes, gathered from
every agent; also the kubectl plugin `kubectl tailwatch`). docs/cli.md describes them."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from exporter import __version__, eventloop, malloc
from exporter.settings import OPTIONS, ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from exporter.kube.config import KubeConnection

T = TypeVar("T")

EXIT_CONFIG = 2
#: From SIGTERM (or SIGINT) to the process's exit, at most: the agent stops its listeners and
#: tasks in about 1 s whatever its clients are doing (exporter.server.SHUTDOWN_GRACE); a stop
#: still running at this deadline (a thread stuck in a read) is cut short, and the exit is
#: still 0. Under the 5 s the agent promises, and the chart's terminationGracePeriodSeconds.
EXIT_DEADLINE = 4.0


def _build_parser(prog: str = "tailwatch") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
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
    _add_episodes(sub)
    return parser


def _flag_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """A settings parser as an argparse type: its message, not argparse's generic one."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _port(text: str) -> int:
    port = int(text) if text.isdigit() else -1
    if not 0 < port < 65536:
        raise ValueError(f"{text!r} is not a port number (1-65535)")
    return port


def _add_episodes(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from exporter.settings import (  # noqa: PLC0415
        parse_label_selector,
        parse_optional_namespace,
        parse_positive_duration,
        parse_positive_int,
    )

    episodes = sub.add_parser(
        "episodes",
        help="the cluster's episodes, merged from every agent",
        description="Ask every agent for its episodes through the API server's pod proxy, "
        "with your kubeconfig, and print one record per disruption of a Service: the "
        "earliest open, the latest close, the dominant cause and each node's view "
        "(docs/cli.md). Exit status: 0 when at least one agent answered, 1 when none did "
        "or the API server cannot be asked, 2 for a usage error.",
    )
    episodes.add_argument("--kubeconfig", default=None, help="kubeconfig file (as kubectl)")
    episodes.add_argument("--context", default=None, help="kubeconfig context (as kubectl)")
    episodes.add_argument(
        "-n",
        "--namespace",
        type=_flag_type(parse_optional_namespace),
        default=None,
        help="only Services of this namespace",
    )
    episodes.add_argument("--service", default=None, help="only Services of this name")
    episodes.add_argument(
        "--since",
        type=_flag_type(parse_positive_duration),
        default=None,
        metavar="DURATION",
        help="only episodes open at some moment in this duration back from now (e.g. 1h)",
    )
    episodes.add_argument("-o", "--output", choices=("table", "json"), default="table")
    episodes.add_argument(
        "--html",
        default=None,
        metavar="FILE",
        help="also write the episodes as a page of timelines, one per Service (bands, events, "
        "recoveries), to FILE",
    )
    episodes.add_argument(
        "--agents-namespace",
        type=_flag_type(parse_optional_namespace),
        default=None,
        help="the agents' namespace (default: all namespaces)",
    )
    episodes.add_argument(
        "--agents-selector",
        type=_flag_type(parse_label_selector),
        default=None,
        help="label selector of the agents' pods (default: the chart's, "
        "app.kubernetes.io/name=tailwatch,app.kubernetes.io/component=agent)",
    )
    episodes.add_argument(
        "--port",
        type=_flag_type(_port),
        default=None,
        help="the agents' HTTP port (default: their container port named metrics, else 9808)",
    )
    episodes.add_argument(
        "--timeout",
        type=_flag_type(parse_positive_duration),
        default=5.0,
        metavar="DURATION",
        help="how long to wait for each agent (default: 5s)",
    )
    episodes.add_argument(
        "--concurrency",
        type=_flag_type(parse_positive_int),
        default=32,
        help="agents asked at once, at most (default: 32)",
    )


def _run_episodes(args: argparse.Namespace) -> int:
    from exporter.cluster import DEFAULT_SELECTOR, EpisodesOptions, run_episodes  # noqa: PLC0415

    return run_episodes(
        EpisodesOptions(
            kubeconfig=args.kubeconfig,
            context=args.context,
            namespace=args.namespace,
            service=args.service,
            since=args.since,
            output=args.output,
            agents_namespace=args.agents_namespace,
            agents_selector=args.agents_selector or DEFAULT_SELECTOR,
            port=args.port,
            timeout=args.timeout,
            concurrency=args.concurrency,
            html=args.html,
        )
    )


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


def kubectl_main(argv: Sequence[str] | None = None) -> int:
    """`kubectl-tailwatch`, the kubectl plugin: `kubectl tailwatch episodes ...` runs this
    with the arguments after the plugin's name, and KUBECONFIG in the environment."""
    return main(argv, prog="kubectl tailwatch")


def main(argv: Sequence[str] | None = None, prog: str = "tailwatch") -> int:
    args = _build_parser(prog).parse_args(argv)
    if args.command == "episodes":
        return _run_episodes(args)
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

    malloc.pin_mmap_threshold()
    try:
        eventloop.run(_run_agent(settings, connection))
    except ListenError as exc:
        print(f"tailwatch: error: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # found once running: --tls-cert-file/--tls-key-file (TlsError)
        print(f"tailwatch: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0
