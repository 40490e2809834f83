"""Opting a Service in and out, and deleting it, in every order Kubernetes may deliver the
Service and EndpointSlice changes: its state goes with it, and no endpoint event is invented
(docs/services.md)."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.core.catalog import ServiceCatalog
from exporter.core.endpoints import EndpointEvent
from exporter.core.services import ServiceRef
from exporter.simulator import objects
from exporter.simulator.objects import rfc3339
from exporter.simulator.services import endpoint_of_pod, endpoint_slice, service

REF = ServiceRef("shop", "web")
T0 = 1_800_000_000.0  # the agent's clock when the test starts
GRACE = 5.0


def web(*, created: float = T0 - 3600, probe: bool = True) -> dict[str, Any]:
    body = service("web", namespace="shop", cluster_ip="127.30.0.1", probe=probe)
    body["metadata"]["creationTimestamp"] = rfc3339(created)
    return body


def pod(i: int, node: str = "node-a") -> dict[str, Any]:
    return objects.deployment_pod("web", namespace="shop", node=node, seed=i,
                                  pod_ip=f"127.30.1.{i + 1}")  # fmt: skip


def web_slice(*pods: dict[str, Any], uid: str = "s1", probe: bool = True) -> dict[str, Any]:
    body = endpoint_slice(web(probe=probe), [endpoint_of_pod(p) for p in pods])
    body["metadata"]["uid"] = uid
    body["metadata"]["name"] = f"web-{uid}"
    return body


def kinds(events: list[EndpointEvent]) -> list[str]:
    return sorted(e.kind.value for e in events)


class Agent:
    """The catalog fed as the agent's watch handlers feed it; collects what it reports."""

    def __init__(self) -> None:
        self.catalog = ServiceCatalog(node="node-a", grace=GRACE)
        self.events: list[EndpointEvent] = []
        self.catalog.sync_services([], T0)
        self.catalog.endpoints.sync([], T0)
        self.catalog.take_changed()

    def service(self, event: str, body: dict[str, Any], at: float) -> set[ServiceRef]:
        self.catalog.apply_service(event, body, at)
        return self.catalog.take_changed()

    def slice(self, event: str, body: dict[str, Any], at: float) -> set[ServiceRef]:
        self.events += self.catalog.endpoints.apply(event, body, at)
        return self.catalog.take_changed()

    def tick(self, at: float) -> None:
        self.events += self.catalog.endpoints.flush(at)

    def gone(self) -> bool:
        c = self.catalog
        return (
            not c.opted_in(REF)
            and c.endpoints.counts_of(REF) is None
            and c.targets_of(REF) == []
            and c.resolve("127.30.0.1") is None
            and c.resolve("127.30.1.1") is None
            and REF not in c.endpoints.counts()
        )


@pytest.fixture
def opted_in() -> Agent:
    agent = Agent()
    agent.service("ADDED", web(), T0)
    agent.slice("ADDED", web_slice(pod(0), pod(1, "node-b")), T0)
    assert agent.events == []  # an existing Service's endpoints were not just added
    assert agent.catalog.endpoints.counts_of(REF) is not None
    return agent


def test_deleting_the_service_before_its_slices_leaves_nothing(opted_in: Agent) -> None:
    assert opted_in.service("DELETED", web(), T0 + 10) == {REF}
    assert opted_in.gone()
    opted_in.slice("DELETED", web_slice(pod(0), pod(1, "node-b")), T0 + 11)
    opted_in.tick(T0 + 60)
    assert opted_in.events == []
    assert opted_in.gone()


@pytest.mark.parametrize("service_event", ["DELETED", "MODIFIED"])
def test_slices_going_before_the_service_are_held_then_dropped(
    opted_in: Agent, service_event: str
) -> None:
    """Deletion and opt-out where the slice watch is ahead of the Service watch."""
    opted_in.slice("DELETED", web_slice(pod(0), pod(1, "node-b")), T0 + 10)
    assert opted_in.events == []
    assert opted_in.catalog.endpoints.held == 1
    # Until the grace passes the endpoints are still the Service's (it may be going).
    assert opted_in.catalog.endpoints.counts_of(REF).ready == 2  # type: ignore[union-attr]
    opted_in.tick(T0 + 12)
    opted_in.service(service_event, web(probe=False), T0 + 13)
    opted_in.tick(T0 + 60)
    assert opted_in.events == []
    assert opted_in.catalog.endpoints.held == 0
    assert opted_in.gone()


def test_a_slice_deleted_while_the_service_stays_is_reported_when_it_went(
    opted_in: Agent,
) -> None:
    opted_in.slice("DELETED", web_slice(pod(0), pod(1, "node-b")), T0 + 10)
    opted_in.tick(T0 + 10 + GRACE - 0.5)
    assert opted_in.events == []
    opted_in.tick(T0 + 10 + GRACE)
    assert kinds(opted_in.events) == ["removed", "removed"]
    assert {e.at for e in opted_in.events} == {T0 + 10}
    assert opted_in.catalog.endpoints.counts_of(REF).ready == 0  # type: ignore[union-attr]


def test_a_real_endpoint_removal_is_reported_at_once(opted_in: Agent) -> None:
    assert opted_in.slice("MODIFIED", web_slice(pod(0)), T0 + 10) == {REF}
    assert kinds(opted_in.events) == ["removed"]
    assert opted_in.events[0].identity.endswith(pod(1)["metadata"]["name"])


@pytest.mark.parametrize("slices_first", [False, True])
def test_opting_in_an_existing_service_adopts_its_endpoints(slices_first: bool) -> None:
    agent = Agent()
    if slices_first:
        agent.slice("ADDED", web_slice(pod(0), uid="s1"), T0)
        assert agent.catalog.endpoints.counts_of(REF) is None  # not opted in yet
    agent.service("ADDED", web(created=T0 - 86400), T0 + 0.5)
    agent.slice("ADDED", web_slice(pod(1), uid="s2"), T0 + 1)
    assert agent.events == []
    assert agent.catalog.endpoints.counts_of(REF).ready == 1 + slices_first  # type: ignore[union-attr]
    # After the adoption, changes are real again.
    agent.slice("MODIFIED", web_slice(pod(1), pod(2), uid="s2"), T0 + 30)
    assert kinds(agent.events) == ["added", "ready"]


def test_a_new_service_reports_its_first_endpoints_added() -> None:
    agent = Agent()
    agent.service("ADDED", web(created=T0), T0 + 0.2)
    agent.slice("ADDED", web_slice(pod(0)), T0 + 0.3)
    assert kinds(agent.events) == ["added", "ready"]


def test_opt_out_then_in_again_starts_afresh(opted_in: Agent) -> None:
    opted_in.service("MODIFIED", web(probe=False), T0 + 10)
    opted_in.slice("DELETED", web_slice(pod(0), pod(1, "node-b")), T0 + 10.1)
    assert opted_in.gone()
    opted_in.slice("ADDED", web_slice(pod(0), pod(1, "node-b")), T0 + 20)
    opted_in.service("MODIFIED", web(), T0 + 20.1)
    opted_in.tick(T0 + 60)
    assert opted_in.events == []
    assert opted_in.catalog.endpoints.counts_of(REF).ready == 2  # type: ignore[union-attr]


def test_a_relist_after_the_service_went_reports_nothing(opted_in: Agent) -> None:
    # The Service watch relists without the Service; the slice watch relists without it.
    opted_in.catalog.sync_services([], T0 + 30)
    opted_in.events += opted_in.catalog.endpoints.sync([], T0 + 31).events
    opted_in.tick(T0 + 60)
    assert opted_in.events == []
    assert opted_in.gone()


def test_a_change_touches_only_its_service() -> None:
    agent = Agent()
    others = [service(f"svc-{i}", namespace="shop", cluster_ip=f"127.31.0.{i + 1}")
              for i in range(50)]  # fmt: skip
    agent.catalog.sync_services([web(), *others], T0)
    agent.catalog.take_changed()
    changed = agent.slice("MODIFIED", web_slice(pod(0)), T0 + 10)
    assert changed == {REF}


def test_a_held_slice_back_in_a_relist_is_not_reported_removed(opted_in: Agent) -> None:
    """The slice left the selector and came back while the watch was away: the relist has
    it again, unchanged, so nothing was removed."""
    body = web_slice(pod(0), pod(1, "node-b"))
    opted_in.slice("DELETED", body, T0 + 10)
    assert opted_in.catalog.endpoints.held == 1
    opted_in.events += opted_in.catalog.endpoints.sync([body], T0 + 11).events
    opted_in.tick(T0 + 60)
    assert opted_in.events == []
    assert opted_in.catalog.endpoints.counts_of(REF).ready == 2  # type: ignore[union-attr]
