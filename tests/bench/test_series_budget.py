"""The series a real Prometheus stores for one node at the reference load (docs/design.md,
*Reference load and budgets*: 110 pods, 330 containers, 20 opted-in Services, 25 local
endpoints, latency in several states, OTLP client series), per family, in one run:

- *native*: Debian's Prometheus with `--enable-feature=native-histograms`, which scrapes the
  protobuf format; every histogram is one series per label set. Budget: 6,000 series.
- *classic*: the same Prometheus without the feature, scraping the text format with the
  default classic layout (27 bounds + the SLO).
- *before*: the classic layout the agent had before native histograms (98 bounds, 2^(1/5)
  apart from 92.5 µs to 64 s), for the breakdown in docs/performance.md.

Run: `.venv/bin/python -m pytest tests/bench/test_series_budget.py -m bench -s`
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from exporter.catalogue import FAMILIES, Kind
from exporter.cgroups.synthetic import TreeLayout, pod_snapshots, reference_pods, write_tree
from tests.exposition.node_state import NodeState
from tests.exposition.serving import serving
from tests.mixin.prometheus import Prometheus, running_prometheus, wait_until

pytestmark = [pytest.mark.bench, pytest.mark.timeout(600)]

SERVICES = 20
LOCAL_ENDPOINTS = 25
BUDGET = 6_000

_STEPS = 5
BEFORE_LAYOUT = tuple(
    float(f"{2.0 ** (k / _STEPS):.4g}")
    for k in range(math.floor(_STEPS * math.log2(1e-4)), math.ceil(_STEPS * math.log2(60.0)) + 1)
)


def family_of(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and any(f.name == base and f.kind is Kind.HISTOGRAM for f in FAMILIES):
            return base
    return name


def stored_series(prometheus: Prometheus) -> dict[str, int]:
    """Series Prometheus holds per family (a classic histogram's _bucket, _sum and _count
    counted as its family)."""
    out: dict[str, int] = {}
    query = 'count by (__name__) ({__name__=~"tailwatch_.+|process_.+"})'
    for sample in prometheus.query(query):
        family = family_of(sample["metric"]["__name__"])
        out[family] = out.get(family, 0) + int(sample["value"][1])
    return out


def count_series(tmp: Path, address: str, native: bool) -> dict[str, int]:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "node", "static_configs": [{"targets": [address]}]}],
    }
    with running_prometheus(tmp, config, native_histograms=native) as prometheus:
        # A scrape is appended in one commit: once any series is there, all of them are.
        return wait_until(lambda: stored_series(prometheus), "a first scrape", 60)


@pytest.fixture
def node_tree(tmp_path: Path) -> tuple[Path, TreeLayout, list[object]]:
    layout = TreeLayout("v2", "systemd", "containerd")
    pods = reference_pods("containerd")
    root = tmp_path / "cgroup"
    root.mkdir()
    write_tree(root, layout, pods)
    return root, layout, pods


def test_series_stored_by_prometheus_at_the_reference_node(
    tmp_path: Path, node_tree: tuple[Path, TreeLayout, list[object]]
) -> None:
    root, layout, pods = node_tree
    snapshots = pod_snapshots(layout, pods)  # type: ignore[arg-type]
    counts: dict[str, dict[str, int]] = {}
    for mode, classic_layout, native in (
        ("native", None, True),
        ("classic", None, False),
        ("before", BEFORE_LAYOUT, False),
    ):
        kwargs = {"classic_layout": classic_layout} if classic_layout else {}
        state = NodeState(root, snapshots, services=SERVICES, endpoints=LOCAL_ENDPOINTS, **kwargs)
        try:
            with serving(state.exposition) as address:
                directory = tmp_path / mode
                directory.mkdir()
                counts[mode] = count_series(directory, address, native)
        finally:
            state.close()

    families = sorted({f for c in counts.values() for f in c})
    print("\n| family | before (98 bounds) | classic (27 + SLO) | native |")
    print("| --- | ---: | ---: | ---: |")
    for family in families:
        row = " | ".join(f"{counts[m].get(family, 0):,}" for m in ("before", "classic", "native"))
        print(f"| `{family}` | {row} |")
    totals = {m: sum(c.values()) for m, c in counts.items()}
    print(f"| **total** | {totals['before']:,} | {totals['classic']:,} | {totals['native']:,} |")
    assert totals["native"] <= BUDGET
    assert totals["native"] < totals["classic"] < totals["before"]
