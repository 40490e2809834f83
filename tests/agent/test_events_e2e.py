"""Episodes outlive the agent, end to end: agents run with --emit-events against the
simulator, a real prober against loopback servers. Each episode change is an Event on the
Service (what `kubectl get events` and `kubectl describe service` show once the agent is
gone); an agent restarted on the same node reads them back and goes on: the open episode
closes, the closed one recovers, without writing again what was written."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest

from exporter.core.episodes import Episode, iso
from exporter.core.restore import episode_record
from exporter.core.services import ServiceRef
from exporter.kube.events import NODE_LABEL, RECORD_ANNOTATION, REPORTING_CONTROLLER, micro_time
from exporter.simulator import ApiServer, objects
from exporter.simulator.services import endpoint_of_pod, endpoint_slice
from tests.agent.conftest import (
    LoopbackBackend,
    loopback_backend,
    probed_web_service,
    running_agent,
)
from tests.agent.test_episodes_e2e import (
    FAST,
    LOADED,
    SLOW,
    WINDOWS,
    episodes,
    samples,
    web_on_two_nodes,
)
from tests.conftest import wait_for
from tests.core.kube_schema import EDGE_VERSIONS

CLUSTER_IP, POD_IP = "127.3.2.1", "127.3.2.2"
# Room for three agent starts between a close and its recovery on a loaded machine.
SETTINGS = {**WINDOWS, "recovery_max": 120.0, "emit_events": True}


@pytest.fixture
async def backend() -> AsyncIterator[tuple[LoopbackBackend, int, int]]:
    async with loopback_backend(CLUSTER_IP, POD_IP) as state:
        state.delay = FAST
        yield state, state.ports[0], state.ports[1]


async def kubectl_events(api: ApiServer, service: str) -> list[dict[str, Any]]:
    """`kubectl get events --field-selector regarding.name=<service>` (events.k8s.io/v1)."""
    async with (
        aiohttp.ClientSession(headers={"Authorization": "Bearer test-token"}) as http,
        http.get(
            f"{api.url}/apis/events.k8s.io/v1/namespaces/default/events",
            params={"fieldSelector": f"regarding.name={service},regarding.kind=Service"},
        ) as resp,
    ):
        assert resp.status == 200
        items = (await resp.json())["items"]
    return sorted(items, key=lambda e: e["eventTime"])


def validate(item: dict[str, Any]) -> None:
    """An item of the list, as the object it is (list items carry no kind)."""
    for version in EDGE_VERSIONS:
        event = {"apiVersion": "events.k8s.io/v1", "kind": "Event", **item}
        kubernetes_validate.validate(event, version, strict=True)


def by_reason(api: ApiServer) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for event in api.store.list("events", "default"):
        assert event["reason"] not in out, f"{event['reason']} written twice"
        out[event["reason"]] = event
    return out


async def test_episodes_survive_agent_restarts_as_events(
    api: ApiServer,
    kubeconfig: Path,
    tmp_path: Path,
    backend: tuple[LoopbackBackend, int, int],
) -> None:
    state, service_port, pod_port = backend
    svc = api.store.create("services", probed_web_service(CLUSTER_IP, service_port))
    replace_slice = web_on_two_nodes(api, svc, pod_port, there_ip="127.3.2.9")

    def creates() -> int:
        return api.requests.count("create", "events")

    # The first agent: a baseline, then an episode opens; it stops while the episode is open.
    async with running_agent(kubeconfig, tmp_path, **SETTINGS) as first:
        await wait_for(
            lambda: samples(first).get(("probe", "service", "steady"), 0) >= 90,
            "a steady baseline (9 s of probes)",
            timeout=LOADED,
        )
        state.delay = SLOW  # the other pod is gone: this one queues
        replace_slice(ready=False)
        await wait_for(lambda: "EpisodeOpened" in by_reason(api), "the Opened Event")
        assert (await episodes(first))["events"]["written"] == {"created": 1, "patched": 0}

    # What kubectl shows with no agent running.
    (opened,) = await kubectl_events(api, "web")
    validate(opened)
    assert opened["regarding"]["uid"] == svc["metadata"]["uid"]  # what describe selects on
    assert (opened["reason"], opened["type"], opened["action"]) == (
        "EpisodeOpened", "Warning", "Opened",
    )  # fmt: skip
    assert opened["reportingController"] == REPORTING_CONTROLLER
    assert opened["reportingInstance"] == "tailwatch-node-a"
    assert opened["metadata"]["labels"][NODE_LABEL] == "node-a"
    assert "A readiness change of default/web" in opened["note"]
    assert "episode default/web/1" in opened["note"] and "node node-a" in opened["note"]
    record = json.loads(opened["metadata"]["annotations"][RECORD_ANNOTATION])
    assert (record["id"], record["status"], record["cause"]) == ("default/web/1", "open",
                                                                "readiness")  # fmt: skip
    written = creates()

    # The second agent on the node: the episode is open again, and closes by the usual rule.
    async with running_agent(kubeconfig, tmp_path, **SETTINGS) as second:
        doc = await episodes(second)
        (back,) = doc["open"]
        assert (back["id"], back["status"], back["restored"]) == ("default/web/1", "open", True)
        assert back["opened_at"] == iso(record["opened_at"]) and back["cause"] == "readiness"
        assert back["latency"]["baseline"]["supported"]["p99"], back["latency"]
        assert doc["events"]["restore"] == {"state": "restored", "events": 1, "live": 1,
                                            "recent": 0}  # fmt: skip
        assert samples(second).get(("tailwatch_service_disrupted", "readiness", "web")) == 1
        await wait_for(
            lambda: samples(second).get(("probe", "service", "disrupted"), 0) >= 5,
            "slow probes during the restored episode",
            timeout=LOADED,
        )
        assert creates() == written  # nothing written again
        replace_slice(ready=True)
        await wait_for(lambda: "EpisodeClosed" in by_reason(api), "the Closed Event", LOADED)
        (closed,) = (await episodes(second))["recent"]
        assert (closed["id"], closed["status"]) == ("default/web/1", "recovering")
        assert closed["impact"] == "severe"  # against the restored baseline

    # The third: the closed episode waits for its recovery, which it sees and writes.
    async with running_agent(kubeconfig, tmp_path, **SETTINGS) as third:
        doc = await episodes(third)
        assert doc["open"] == []
        (waiting,) = doc["recent"]
        assert (waiting["id"], waiting["status"], waiting["restored"]) == (
            "default/web/1", "recovering", True,
        )  # fmt: skip
        assert waiting["impact"] == "severe" and waiting["latency"]["ratios"]["p99"] > 3
        state.delay = FAST
        await wait_for(lambda: "EpisodeRecovered" in by_reason(api), "the Recovered Event",
                       LOADED)  # fmt: skip
        (recovered,) = (await episodes(third))["recent"]
        assert recovered["status"] == "recovered" and recovered["recovery_seconds"] > 0
        # A new episode continues the ids, and the Opened Event's series.
        state.delay = SLOW
        replace_slice(ready=False)
        await wait_for(
            lambda: [e["id"] for e in (third.episodes_json())["open"]] == ["default/web/2"],
            "the next episode",
        )
        await wait_for(
            lambda: by_reason(api)["EpisodeOpened"].get("series", {}).get("count") == 2,
            "the Opened Event's series",
        )
        state.delay = FAST

    shown = await kubectl_events(api, "web")
    assert [(e["reason"], e.get("series", {}).get("count", 1)) for e in shown] == [
        ("EpisodeOpened", 2), ("EpisodeClosed", 1), ("EpisodeRecovered", 1),
    ]  # fmt: skip
    assert creates() == written + 2  # Closed and Recovered; the second opening a patch
    for event in shown:
        validate(event)


async def test_without_rbac_or_a_service_the_agent_goes_on_and_counts(
    api: ApiServer,
    kubeconfig: Path,
    tmp_path: Path,
    backend: tuple[LoopbackBackend, int, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An episode read back for a Service deleted meanwhile is forgotten with it; Events the
    agent may not write are counted and logged once with the fix; the agent runs on."""
    _, service_port, pod_port = backend
    svc = api.store.create("services", probed_web_service(CLUSTER_IP, service_port))
    here = objects.deployment_pod("web", node="node-a", pod_ip=POD_IP, seed=1)
    api.store.create("pods", here)
    slice_ = endpoint_slice(svc, [endpoint_of_pod(here)], ports=(("http", pod_port),))
    api.store.create("endpointslices", slice_)
    gone = ServiceRef("default", "gone")
    orphan = Episode(id="default/gone/4", service=gone, opened_at=time.time() - 30, latency={})
    api.store.create(
        "events",
        {
            "metadata": {
                "name": "gone.1",
                "namespace": "default",
                "labels": {NODE_LABEL: "node-a"},
                "annotations": {RECORD_ANNOTATION: json.dumps(episode_record(orphan, 1.2))},
            },
            "eventTime": micro_time(orphan.opened_at),
            "reportingController": REPORTING_CONTROLLER,
            "reportingInstance": "tailwatch-node-a",
            "action": "Opened",
            "reason": "EpisodeOpened",
            "regarding": {"apiVersion": "v1", "kind": "Service", "namespace": "default",
                          "name": "gone"},
            "note": "An unexplained tail spike of default/gone, still open.",
            "type": "Warning",
        },
    )  # fmt: skip
    api.faults.forbid("events", ["create", "patch"])
    async with running_agent(kubeconfig, tmp_path, **SETTINGS) as agent:
        doc = await episodes(agent)
        assert doc["events"]["restore"]["live"] == 1
        await wait_for(lambda: not agent.correlator.services.get(gone), "the orphan forgotten")
        assert (await episodes(agent))["open"] == []

        def make_not_ready(obj: dict) -> None:
            obj["endpoints"] = [endpoint_of_pod(objects.mark_not_ready(here, 0.0))]

        for _ in range(2):  # two episodes, two Events refused
            api.store.patch("endpointslices", "default", slice_["metadata"]["name"],
                            make_not_ready)  # fmt: skip
            await wait_for(lambda: (agent.episodes_json())["open"], "an episode")
            api.store.patch("endpointslices", "default", slice_["metadata"]["name"],
                            lambda obj: obj.update(endpoints=slice_["endpoints"]))  # fmt: skip
            await wait_for(lambda: not (agent.episodes_json())["open"], "its close", LOADED)
        await wait_for(
            lambda: agent.metrics.dropped.get("event_forbidden", 0) >= 3, "the Events refused"
        )
        assert agent.readiness()[0]
    fixes = [r for r in caplog.records if "config.emit-events" in r.getMessage()]
    assert len(fixes) == 1, [r.getMessage() for r in fixes]
    assert {e["metadata"]["name"] for e in api.store.list("events")} == {"gone.1"}


async def test_without_emit_events_no_event_is_read_or_written(
    api: ApiServer,
    kubeconfig: Path,
    tmp_path: Path,
    backend: tuple[LoopbackBackend, int, int],
) -> None:
    _, service_port, pod_port = backend
    svc = api.store.create("services", probed_web_service(CLUSTER_IP, service_port))
    here = objects.deployment_pod("web", node="node-a", pod_ip=POD_IP, seed=1)
    api.store.create("pods", here)
    slice_ = endpoint_slice(svc, [endpoint_of_pod(here)], ports=(("http", pod_port),))
    api.store.create("endpointslices", slice_)
    async with running_agent(kubeconfig, tmp_path, **WINDOWS) as agent:
        api.store.patch("endpointslices", "default", slice_["metadata"]["name"],
                        lambda obj: obj.update(endpoints=[endpoint_of_pod(
                            objects.mark_not_ready(here, 0.0))]))  # fmt: skip
        await wait_for(lambda: (agent.episodes_json())["open"], "an episode")
        assert "events" not in agent.episodes_json()
    assert [r for r in api.requests.records if r.resource == "events"] == []
