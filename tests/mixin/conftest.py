"""Fixtures of the mixin tests: real Prometheus servers, one per session and histogram form
(without native histograms, and with them), for checking queries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mixin.prometheus import Prometheus, running_prometheus

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """An empty Prometheus: enough to parse and type-check every query."""
    directory = tmp_path_factory.mktemp("prometheus")
    with running_prometheus(directory, {"global": {"evaluation_interval": "1m"}}) as server:
        yield server


@pytest.fixture(scope="session")
def native_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """An empty Prometheus with native histograms on."""
    directory = tmp_path_factory.mktemp("prometheus-native")
    config = {"global": {"evaluation_interval": "1m"}}
    with running_prometheus(directory, config, native_histograms=True) as server:
        yield server
