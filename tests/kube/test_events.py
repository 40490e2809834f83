"""Episode Events against the API simulator over real HTTP: what `kubectl get events` and
`kubectl describe service` would show (every Event valid for the real schema), series
instead of repeats, a bounded queue, failures retried, given up, counted and logged once,
and this node's Events read back. The simulator's events.k8s.io/v1 is checked alongside:
the field selectors and the validation the real API server applies."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest

from exporter.core.episodes import (
    ChangeKind,
    Episode,
    EpisodeChange,
    Impact,
    LatencyImpact,
    Source,
    Status,
)
from exporter.core.histogram import FineHistogram
from exporter.core.quantiles import tail_of
from exporter.core.services import ServiceRef
from exporter.kube.config import KubeConnection, load_connection
from exporter.kube.events import (
    EVENT_EMIT_FAILED,
    EVENT_FORBIDDEN,
    EVENT_QUEUE_FULL,
    EVENT_REJECTED,
    MALFORMED_EVENT,
    NODE_LABEL,
    RECORD_ANNOTATION,
    REPORTING_CONTROLLER,
    EpisodeEvents,
    TokenBucket,
    micro_time,
    node_label_value,
    parse_time,
)
from exporter.kube.watching import ApiSession
from exporter.simulator import ApiServer
from tests.conftest import wait_for
from tests.core.kube_schema import SUPPORTED_VERSIONS
from tests.kube.test_reflector import FAST

WEB = ServiceRef("default", "web")
WEB_UID = "0b6a3f0e-8d3e-4a5b-9c61-6f1f0a3e2d11"
T0 = 1_800_000_000.0
FACTOR = 1.2


@pytest.fixture
def connection(kubeconfig: Path) -> KubeConnection:
    return load_connection(str(kubeconfig))


def _histogram(seconds: float, n: int) -> FineHistogram:
    h = FineHistogram()
    for _ in range(n):
        h.record(seconds)
    return h


def an_episode(
    seq: int = 1,
    *,
    service: ServiceRef = WEB,
    opened_at: float = T0,
    status: Status = Status.OPEN,
    impact: Impact | None = None,
) -> Episode:
    """An episode with a steady baseline of 10 ms and 200 ms during it."""
    impact_of = LatencyImpact(Source.SERVICE_PROBE, tail_of(_histogram(0.010, 400)))
    impact_of.during.merge(_histogram(0.200, 60))
    episode = Episode(
        id=f"{service}/{seq}",
        service=service,
        opened_at=opened_at,
        latency={Source.SERVICE_PROBE: impact_of},
        counts={"endpoint/not_ready": 1},
        status=status,
        impact=impact,
    )
    if status is not Status.OPEN:
        episode.closed_at = opened_at + 20
    return episode


def change(kind: ChangeKind, episode: Episode) -> EpisodeChange:
    return EpisodeChange(kind, episode)


class Dropped(dict[str, int]):
    def __call__(self, reason: str) -> None:
        self[reason] = self.get(reason, 0) + 1


@asynccontextmanager
async def emitting(
    connection: KubeConnection, *, run: bool = True, **options: Any
) -> AsyncIterator[tuple[EpisodeEvents, ApiSession, Dropped]]:
    """An emitter for node-a, its worker writing through a session to the simulator."""
    dropped = Dropped()
    emitter = EpisodeEvents(
        "node-a",
        factor=FACTOR,
        uid_of=lambda ref: WEB_UID if ref == WEB else "",
        count_dropped=dropped,
        backoff=(0.01, 0.05),
        **options,
    )
    async with ApiSession(connection, FAST) as session:
        task = asyncio.create_task(emitter.run(session)) if run else None
        try:
            yield emitter, session, dropped
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


def events(api: ApiServer, namespace: str = "default") -> list[dict[str, Any]]:
    return api.store.list("events", namespace)


async def listed(api: ApiServer, **params: str) -> list[dict[str, Any]]:
    """GET events.k8s.io/v1 events over HTTP, as kubectl does, with its selectors."""
    url = f"{api.url}/apis/events.k8s.io/v1/namespaces/default/events"
    async with (
        aiohttp.ClientSession(headers={"Authorization": "Bearer test-token"}) as http,
        http.get(url, params=params) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return (await resp.json())["items"]


def validate(event: dict[str, Any]) -> None:
    for version in SUPPORTED_VERSIONS:
        kubernetes_validate.validate(event, version, strict=True)


async def test_an_episode_opening_is_a_valid_warning_event_on_its_service(
    api: ApiServer, connection: KubeConnection
) -> None:
    episode = an_episode()
    async with emitting(connection) as (emitter, _, dropped):
        emitter.on_change(change(ChangeKind.OPENED, episode))
        (event,) = await wait_for(lambda: events(api), "the Event")
    validate(event)
    assert event["apiVersion"] == "events.k8s.io/v1" and event["kind"] == "Event"
    assert event["metadata"]["name"].startswith("web.")
    int(event["metadata"]["name"].removeprefix("web."), 16)  # client-go's <name>.<hex ns>
    assert event["metadata"]["labels"] == {NODE_LABEL: "node-a"}
    assert event["regarding"] == {
        "apiVersion": "v1", "kind": "Service", "namespace": "default", "name": "web",
        "uid": WEB_UID,
    }  # fmt: skip
    assert event["reportingController"] == REPORTING_CONTROLLER
    assert event["reportingInstance"] == "tailwatch-node-a"
    assert (event["action"], event["reason"], event["type"]) == ("Opened", "EpisodeOpened",
                                                                "Warning")  # fmt: skip
    assert event["eventTime"] == "2027-01-15T08:00:00.000000Z"
    assert parse_time(event["eventTime"]) == T0
    assert "series" not in event
    note = event["note"]
    assert note.startswith("An unexplained tail spike of default/web")
    assert "episode default/web/1" in note and "seen from node node-a" in note
    record = json.loads(event["metadata"]["annotations"][RECORD_ANNOTATION])
    assert record["id"] == "default/web/1" and record["status"] == "open"
    assert record["baseline"]["n"] == 400 and record["threshold"] > 0.010
    # What `kubectl get events --field-selector regarding.name=web` lists.
    assert [
        e["metadata"]["name"] for e in await listed(api, fieldSelector="regarding.name=web")
    ] == [event["metadata"]["name"]]
    assert await listed(api, fieldSelector="regarding.name=other") == []
    assert dropped == {} and emitter.written == {"created": 1, "patched": 0}


@pytest.mark.parametrize(
    ("kind", "status", "impact", "reason", "type_"),
    [
        (ChangeKind.CLOSED, Status.RECOVERING, Impact.SEVERE, "EpisodeClosed", "Warning"),
        (ChangeKind.CLOSED, Status.RECOVERING, Impact.NONE, "EpisodeClosed", "Normal"),
        (ChangeKind.RECOVERED, Status.RECOVERED, Impact.SEVERE, "EpisodeRecovered", "Normal"),
        (ChangeKind.NOT_RECOVERED, Status.NOT_RECOVERED, Impact.DEGRADED,
         "EpisodeNotRecovered", "Warning"),
        (ChangeKind.INTERRUPTED, Status.INTERRUPTED, Impact.SEVERE, "EpisodeInterrupted",
         "Normal"),
        (ChangeKind.NO_BASELINE, Status.NO_BASELINE, Impact.UNKNOWN, "EpisodeNoBaseline",
         "Normal"),
    ],
)  # fmt: skip
async def test_each_change_has_its_reason_and_type(
    api: ApiServer,
    connection: KubeConnection,
    kind: ChangeKind,
    status: Status,
    impact: Impact,
    reason: str,
    type_: str,
) -> None:
    episode = an_episode(status=status, impact=impact)
    if status is Status.RECOVERED:
        episode.recovered_at = episode.opened_at + 25
    async with emitting(connection) as (emitter, _, dropped):
        emitter.on_change(change(kind, episode))
        (event,) = await wait_for(lambda: events(api), "the Event")
    validate(event)
    assert (event["reason"], event["type"]) == (reason, type_)
    assert f"impact {impact.value}" in event["note"]
    if kind is ChangeKind.RECOVERED:
        assert event["eventTime"] == micro_time(episode.opened_at + 25)  # when, not noticed
        assert "recovered 5.0 s after the close" in event["note"]
    assert dropped == {}


async def test_repeats_within_the_series_window_patch_one_event_with_a_count(
    api: ApiServer, connection: KubeConnection
) -> None:
    async with emitting(connection) as (emitter, _, dropped):
        for seq in range(1, 6):  # a flapping Service: five episodes a minute apart
            emitter.on_change(change(ChangeKind.OPENED, an_episode(seq, opened_at=T0 + seq * 60)))
        await wait_for(lambda: emitter.written["patched"] == 4, "the repeats")
        (event,) = events(api)
        validate(event)
        assert event["series"] == {"count": 5, "lastObservedTime": micro_time(T0 + 300)}
        assert event["eventTime"] == micro_time(T0 + 60)  # the first occurrence
        record = json.loads(event["metadata"]["annotations"][RECORD_ANNOTATION])
        assert record["id"] == "default/web/5"  # the newest episode's record
        # Past the window (6 minutes after the last one): a new Event.
        emitter.on_change(change(ChangeKind.OPENED, an_episode(6, opened_at=T0 + 300 + 361)))
        await wait_for(lambda: len(events(api)) == 2, "a new Event")
        # Another reason is another series, and a Service another one again.
        closing = an_episode(6, opened_at=T0 + 700, status=Status.RECOVERING)
        emitter.on_change(change(ChangeKind.CLOSED, closing))
        other = ServiceRef("default", "api")
        emitter.on_change(change(ChangeKind.OPENED, an_episode(1, service=other,
                                                               opened_at=T0 + 700)))  # fmt: skip
        await wait_for(lambda: len(events(api)) == 4, "two more Events")
    assert sorted(e["series"]["count"] for e in events(api) if "series" in e) == [5]
    assert dropped == {} and emitter.written == {"created": 4, "patched": 4}


async def test_an_event_gone_meanwhile_is_created_anew(
    api: ApiServer, connection: KubeConnection
) -> None:
    async with emitting(connection) as (emitter, _, dropped):
        emitter.on_change(change(ChangeKind.OPENED, an_episode(1)))
        (first,) = await wait_for(lambda: events(api), "the Event")
        api.store.remove("events", "default", first["metadata"]["name"])  # its TTL ran out
        emitter.on_change(change(ChangeKind.OPENED, an_episode(2, opened_at=T0 + 60)))
        (second,) = await wait_for(lambda: events(api), "a new Event")
    assert second["metadata"]["name"] != first["metadata"]["name"]
    assert "series" not in second
    assert dropped == {}


async def test_the_queue_is_bounded_and_drops_the_oldest(
    api: ApiServer, connection: KubeConnection, caplog: pytest.LogCaptureFixture
) -> None:
    async with emitting(connection, run=False, queue_limit=3) as (emitter, session, dropped):
        for seq in range(1, 6):
            emitter.on_change(change(ChangeKind.OPENED, an_episode(seq, opened_at=T0 + seq)))
        assert [e.at for e in emitter.queue] == [T0 + 3, T0 + 4, T0 + 5]
        assert dropped == {EVENT_QUEUE_FULL: 2}
        assert emitter.as_json()["queued"] == 3
        task = asyncio.create_task(emitter.run(session))
        try:
            await wait_for(lambda: emitter.written["patched"] == 2, "the queue written")
        finally:
            task.cancel()
    (event,) = events(api)
    assert event["eventTime"] == micro_time(T0 + 3) and event["series"]["count"] == 3
    assert sum("queue full" in r.getMessage() for r in caplog.records) == 1


async def test_server_errors_are_retried_then_given_up_and_counted(
    api: ApiServer, connection: KubeConnection
) -> None:
    api.faults.fail_next(2, 500, "events", verbs=("create",))
    async with emitting(connection, max_attempts=3) as (emitter, _, dropped):
        emitter.on_change(change(ChangeKind.OPENED, an_episode(1)))
        await wait_for(lambda: events(api), "the Event, on the third attempt")
        assert api.requests.count("create", "events") == 3 and dropped == {}

        api.faults.fail_next(3, 503, "events", verbs=("create",))
        emitter.on_change(change(ChangeKind.CLOSED, an_episode(1, status=Status.RECOVERING)))
        await wait_for(lambda: dropped.get(EVENT_EMIT_FAILED) == 1, "the Event given up")
    assert api.requests.count("create", "events") == 6 and len(events(api)) == 1


async def test_a_rejected_event_is_not_retried(
    api: ApiServer, connection: KubeConnection, caplog: pytest.LogCaptureFixture
) -> None:
    api.faults.fail_next(1, 400, "events", verbs=("create",), message="bad Event")
    async with emitting(connection) as (emitter, _, dropped):
        emitter.on_change(change(ChangeKind.OPENED, an_episode(1)))
        await wait_for(lambda: dropped.get(EVENT_REJECTED) == 1, "the Event rejected")
    assert api.requests.count("create", "events") == 1 and events(api) == []
    assert any("bad Event" in r.getMessage() for r in caplog.records)


async def test_forbidden_is_counted_and_logged_once_with_the_fix(
    api: ApiServer, connection: KubeConnection, caplog: pytest.LogCaptureFixture
) -> None:
    api.faults.forbid("events", ["create"])
    async with emitting(connection) as (emitter, _, dropped):
        for seq in range(1, 4):
            emitter.on_change(change(ChangeKind.OPENED, an_episode(seq, opened_at=T0 + seq)))
        await wait_for(lambda: dropped.get(EVENT_FORBIDDEN) == 3, "every Event dropped")
    assert api.requests.count("create", "events") == 3  # not retried
    fixes = [r for r in caplog.records if "config.emit-events" in r.getMessage()]
    assert len(fixes) == 1 and fixes[0].levelno == logging.WARNING
    assert 'cannot create resource "events" in API group "events.k8s.io"' in fixes[0].getMessage()


async def test_this_nodes_events_are_read_back_and_their_series_continue(
    api: ApiServer, connection: KubeConnection, caplog: pytest.LogCaptureFixture
) -> None:
    opened, closed = an_episode(1), an_episode(1, status=Status.RECOVERING, impact=Impact.SEVERE)
    async with emitting(connection) as (emitter, _, _):
        emitter.on_change(change(ChangeKind.OPENED, opened))
        emitter.on_change(change(ChangeKind.CLOSED, closed))
        await wait_for(lambda: len(events(api)) == 2, "both Events")
    # Another agent's, another controller's, and one whose record cannot be read.
    async with emitting(connection) as (_, session, _):
        other = EpisodeEvents("node-b", factor=FACTOR)
        task = asyncio.create_task(other.run(session))
        other.on_change(change(ChangeKind.OPENED, an_episode(2, opened_at=T0 + 100)))
        await wait_for(lambda: len(events(api)) == 3, "node-b's Event")
        task.cancel()
    (mine,) = [e for e in events(api) if e["reason"] == "EpisodeOpened" and
               e["reportingInstance"] == "tailwatch-node-a"]  # fmt: skip
    foreign = {**mine, "metadata": {**mine["metadata"], "name": "web.foreign"},
               "reportingController": "example.com/other"}  # fmt: skip
    broken = {**mine, "metadata": {**mine["metadata"], "name": "web.broken",
                                   "annotations": {RECORD_ANNOTATION: "{not json"}}}  # fmt: skip
    for obj in (foreign, broken):
        obj["metadata"] = {k: v for k, v in obj["metadata"].items() if k in
                           ("name", "namespace", "labels", "annotations")}  # fmt: skip
        api.store.create("events", obj)

    async with emitting(connection, run=False) as (reader, session, dropped):
        records = await reader.read_back(session)
        assert sorted((r.id, r.status.value) for r in records) == [
            ("default/web/1", "open"), ("default/web/1", "recovering"),
        ]  # fmt: skip
        assert dropped == {MALFORMED_EVENT: 1}
        assert reader.as_json()["restore"] == {"state": "read", "events": 2}
        listings = api.requests.matching("list", "events")  # in pages of 3
        assert {r.params["labelSelector"] for r in listings} == {f"{NODE_LABEL}=node-a"}
        # The same Event again within its window continues its series.
        task = asyncio.create_task(reader.run(session))
        reader.on_change(change(ChangeKind.OPENED, an_episode(2, opened_at=T0 + 60)))
        await wait_for(lambda: reader.written["patched"] == 1, "the series continued")
        task.cancel()
    assert reader.written["created"] == 0
    (again,) = [e for e in events(api) if e["metadata"]["name"] == mine["metadata"]["name"]]
    assert again["series"]["count"] == 2
    assert any("web.broken" in r.getMessage() for r in caplog.records)


async def test_reading_back_without_rbac_starts_empty_and_says_the_fix(
    api: ApiServer, connection: KubeConnection, caplog: pytest.LogCaptureFixture
) -> None:
    api.faults.forbid("events", ["list"])
    async with emitting(connection, run=False) as (reader, session, _):
        assert await reader.read_back(session) == []
        assert reader.as_json()["restore"]["state"] == "failed"
    assert api.requests.count("list", "events") == 1  # not retried
    assert any("config.emit-events" in r.getMessage() for r in caplog.records)


def test_a_long_summary_is_cut_to_the_note_limit_keeping_its_facts() -> None:
    episode = an_episode(status=Status.INTERRUPTED, impact=Impact.SEVERE)
    episode.interrupted_by = "µ" * 3000  # two bytes each
    emitter = EpisodeEvents("node-a", factor=FACTOR)
    emitter.on_change(change(ChangeKind.INTERRUPTED, episode))
    (pending,) = emitter.queue
    assert len(pending.note.encode()) <= 1024
    assert pending.note.endswith("seen from node node-a)") and "..." in pending.note
    assert len(pending.record.encode()) < 4096


def test_node_names_longer_than_a_label_value_are_hashed() -> None:
    assert node_label_value("ip-10-0-1-23.eu-west-1.compute.internal") == (
        "ip-10-0-1-23.eu-west-1.compute.internal"
    )
    long_name = "node-" + "a" * 100
    hashed = node_label_value(long_name)
    assert hashed.startswith("h-") and len(hashed) <= 63 and hashed == node_label_value(long_name)
    emitter = EpisodeEvents(long_name, factor=FACTOR)
    assert len(emitter.instance) <= 128


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=1.0, burst=3, clock=lambda: now[0])
    assert [bucket.delay() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.delay() == pytest.approx(1.0)  # the fourth waits for its token
    now[0] = 10.0  # refilled, up to the burst only
    assert [bucket.delay() for _ in range(4)] == pytest.approx([0.0, 0.0, 0.0, 1.0])


# -- the simulator's events.k8s.io/v1 -----------------------------------------------------


def _event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "web.1", "namespace": "default"},
        "eventTime": micro_time(T0),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": "tailwatch-node-a",
        "action": "Opened",
        "reason": "EpisodeOpened",
        "regarding": {"apiVersion": "v1", "kind": "Service", "namespace": "default",
                      "name": "web"},
        "note": "x",
        "type": "Warning",
    }  # fmt: skip
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not None}


async def _send(api: ApiServer, method: str, path: str, body: Any, ctype: str) -> int:
    async with (
        aiohttp.ClientSession(headers={"Authorization": "Bearer test-token"}) as http,
        http.request(method, api.url + path, data=json.dumps(body),
                     headers={"Content-Type": ctype}) as resp,
    ):  # fmt: skip
        return resp.status


COLLECTION = "/apis/events.k8s.io/v1/namespaces/default/events"


@pytest.mark.parametrize(
    "overrides",
    [
        {"eventTime": None},
        {"type": "Info"},
        {"reportingController": None},
        {"reportingController": "not a name!"},
        {"reportingInstance": "x" * 129},
        {"action": None},
        {"reason": None},
        {"note": "é" * 513},  # 1026 bytes
        {"series": {"count": 1, "lastObservedTime": micro_time(T0)}},
        {"series": {"count": 2}},
        {"deprecatedCount": 3},
    ],
    ids=str,
)
async def test_the_simulator_refuses_an_event_the_api_server_refuses(
    api: ApiServer, overrides: dict[str, Any]
) -> None:
    assert await _send(api, "POST", COLLECTION, _event(), "application/json") == 201
    body = _event(**overrides)
    body["metadata"] = {"name": "web.2"}
    assert await _send(api, "POST", COLLECTION, body, "application/json") == 422


async def test_the_simulator_patches_a_series_but_not_what_is_immutable(api: ApiServer) -> None:
    assert await _send(api, "POST", COLLECTION, _event(), "application/json") == 201
    series = {"series": {"count": 2, "lastObservedTime": micro_time(T0 + 1)}}
    merge = "application/merge-patch+json"
    assert await _send(api, "PATCH", f"{COLLECTION}/web.1", series, merge) == 200
    assert await _send(api, "PATCH", f"{COLLECTION}/web.1", {"note": "y"}, merge) == 422
    strategic = "application/strategic-merge-patch+json"
    series["series"]["count"] = 3
    assert await _send(api, "PATCH", f"{COLLECTION}/web.1", series, strategic) == 200
    (stored,) = events(api)
    assert stored["series"]["count"] == 3 and stored["note"] == "x"
    validate(stored)


async def test_the_simulator_selects_events_by_the_real_field_labels(api: ApiServer) -> None:
    api.store.create("events", _event())
    api.store.create("events", _event(metadata={"name": "web.2", "namespace": "default"},
                                      reason="EpisodeClosed", type="Normal"))  # fmt: skip
    for selector, names in (
        ("regarding.name=web,regarding.kind=Service", ["web.1", "web.2"]),
        ("reason=EpisodeClosed", ["web.2"]),
        ("type=Warning", ["web.1"]),
        (f"reportingController={REPORTING_CONTROLLER}", ["web.1", "web.2"]),
        ("regarding.namespace=other", []),
    ):
        items = await listed(api, fieldSelector=selector)
        assert [i["metadata"]["name"] for i in items] == names, selector
    url = f"{api.url}{COLLECTION}"
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer test-token"}) as http:
        for refused in ("involvedObject.name=web", "source=tailwatch", "note=x"):
            async with http.get(url, params={"fieldSelector": refused}) as resp:
                assert resp.status == 400, refused
