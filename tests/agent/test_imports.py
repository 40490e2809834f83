"""What `tailwatch run` imports: the libraries the agent uses, and none of the ones only the
other commands, the tests or a legacy kubeconfig need. Every module imported stays in the
agent's memory for its whole life (the `kubernetes` package alone, client and models, was
~20 MiB of a 64 MiB budget), so this guards the agent's resident memory against an import
added in passing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from exporter.simulator import kubeconfig_dict, write_kubeconfig

ROOT = Path(__file__).parents[2]

#: `tailwatch run` up to the agent's start, in a fresh interpreter: the CLI parses the
#: flags, loads the settings and the kubeconfig, configures logging and imports the agent and
#: the event loop; then, instead of running, it lists every module imported.
LIST_IMPORTS = """
import sys
import exporter.cli as cli
from exporter import eventloop

async def list_modules(settings, connection):
    import exporter.agent
    eventloop.loop_factory()
    print("\\n".join(sorted(sys.modules)))

cli._run_agent = list_modules
sys.exit(cli.main(sys.argv[1:]))
"""

#: Packages the agent must not import, and why they are installed at all.
NOT_FOR_THE_AGENT = {
    "kubernetes": "an auth-provider kubeconfig's loader, and the tests' reference client",
    "aiohttp": "`tailwatch episodes`, the simulator and the tests (~10 MiB resident)",
    "yarl": "aiohttp's",
    "multidict": "aiohttp's",
    "pydantic": "the kubernetes package's",
    "requests": "the kubernetes package's",
    "urllib3": "the kubernetes package's",
    "oauthlib": "the kubernetes package's",
    "rich": "`tailwatch episodes` tables",
    "grafanalib": "`tailwatch generate dashboards`",
    "exporter.mixin": "`tailwatch generate`",
    "exporter.demo": "`tailwatch demo`",
    "exporter.simulator": "the demo and the tests",
    "exporter.cluster": "`tailwatch episodes`",
    "exporter.report": "`tailwatch demo` and `tailwatch episodes --html`",
    "grpc": "--otlp-grpc-listen only, imported when it is set (~14 MiB resident)",
    "exporter.otlp.grpc_receiver": "--otlp-grpc-listen only",
}


def test_tailwatch_run_imports_only_what_the_agent_uses(tmp_path: Path) -> None:
    config = kubeconfig_dict("http://127.0.0.1:8080", token="t")
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", config)
    done = subprocess.run(
        [sys.executable, "-c", LIST_IMPORTS, "run", "--kubeconfig", str(kubeconfig),
         "--node-name", "node-a", "--cgroup-root", str(tmp_path), "--log-level", "warning"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    modules = set(done.stdout.split())
    assert {"exporter.agent", "exporter.httpserver", "exporter.kube.http",
            "exporter.kube.kubeconfig"} <= modules  # fmt: skip
    unwanted = {
        module: NOT_FOR_THE_AGENT[package]
        for module in modules
        for package in NOT_FOR_THE_AGENT
        if module == package or module.startswith(package + ".")
    }
    assert not unwanted, f"`tailwatch run` imports {unwanted}"
