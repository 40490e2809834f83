"""Fidelity: the official `kubernetes` client, configured from the simulator's kubeconfig, lists,
pages, selects, watches (with bookmarks and 410s) and writes as against a real API server."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from exporter.simulator import ApiServer, ThreadedApiServer, kubeconfig_dict, write_kubeconfig

Factory = Callable[..., dict[str, Any]]
TOKEN = "sim-token"


@pytest.fixture
def sim() -> Iterator[ThreadedApiServer]:
    with ThreadedApiServer(token=TOKEN, bookmark_interval=0.05) as server:
        yield server


def api_client(server: ThreadedApiServer, tmp_path: Path) -> client.ApiClient:
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return client.ApiClient(cfg)


@pytest.fixture
def v1(sim: ThreadedApiServer, tmp_path: Path) -> Iterator[client.CoreV1Api]:
    with api_client(sim, tmp_path) as api:
        yield client.CoreV1Api(api)


def test_kubeconfig_points_at_the_server(sim: ThreadedApiServer, tmp_path: Path) -> None:
    path = sim.write_kubeconfig(tmp_path / "sub" / "kubeconfig", namespace="prod")
    assert path.stat().st_mode & 0o777 == 0o600
    _, active = config.list_kube_config_contexts(config_file=str(path))
    assert active["context"]["namespace"] == "prod"
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=cfg)
    assert cfg.host == sim.url
    assert [s["value"] for s in cfg.auth_settings().values()] == [f"Bearer {TOKEN}"]
    with client.ApiClient(cfg) as api:
        assert client.VersionApi(api).get_code().major == "1"


def test_paginated_list(sim: ThreadedApiServer, v1: client.CoreV1Api, make_pod: Factory) -> None:
    for i in range(5):
        sim.store.create("pods", make_pod(f"p{i}", namespace="ns-a" if i < 3 else "ns-b"))
    first = v1.list_pod_for_all_namespaces(limit=2)
    assert [p.metadata.name for p in first.items] == ["p0", "p1"]
    assert first.metadata.remaining_item_count == 3
    sim.store.remove("pods", "ns-a", "p2")  # after the first page: still listed
    names = [p.metadata.name for p in first.items]
    token = first.metadata._continue
    while token:
        page = v1.list_pod_for_all_namespaces(limit=2, _continue=token)
        assert page.metadata.resource_version == first.metadata.resource_version
        names += [p.metadata.name for p in page.items]
        token = page.metadata._continue
    assert names == ["p0", "p1", "p2", "p3", "p4"]
    lists = sim.requests.lists("pods")
    assert [r.params.get("limit") for r in lists] == ["2", "2", "2"]
    assert "continue" not in lists[0].params and all("continue" in r.params for r in lists[1:])
    assert [p.metadata.name for p in v1.list_namespaced_pod("ns-b").items] == ["p3", "p4"]


def test_selectors(sim: ThreadedApiServer, v1: client.CoreV1Api, make_pod: Factory) -> None:
    sim.store.create("pods", make_pod("a", node="node-a", labels={"app": "web", "track": "canary"}))
    sim.store.create("pods", make_pod("b", node="node-b", labels={"app": "web"}))
    sim.store.create("pods", make_pod("c", node="node-a", labels={"app": "db"}))
    on_a = v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-a")
    assert [p.metadata.name for p in on_a.items] == ["a", "c"]
    web_stable = v1.list_pod_for_all_namespaces(label_selector="app in (web,api),!track")
    assert [p.metadata.name for p in web_stable.items] == ["b"]
    with pytest.raises(ApiException) as caught:
        v1.list_pod_for_all_namespaces(field_selector="spec.unknown=x")
    assert caught.value.status == 400


def test_watch_stream_sees_changes_in_order_and_bookmarks(
    sim: ThreadedApiServer, v1: client.CoreV1Api, make_pod: Factory, wait_until: Any
) -> None:
    sim.store.create("pods", make_pod("old", node="node-a"))
    listed = v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-a")

    def lifecycle() -> None:
        wait_until(lambda: sim.faults.open_watches == 1, what="the client's watch")
        sim.store.create("pods", make_pod("web-1", node="node-a", grace=5))
        sim.store.create("pods", make_pod("elsewhere", node="node-b"))
        sim.store.patch("pods", "default", "web-1", lambda o: o["status"].update(podIP="127.0.0.7"))
        sim.store.delete("pods", "default", "web-1")  # terminating: MODIFIED
        sim.store.delete("pods", "default", "web-1")  # the kubelet's confirmation: DELETED

    writer = threading.Thread(target=lifecycle)
    writer.start()
    stream = watch.Watch()
    seen: list[tuple[str, str]] = []
    bookmark_after_delete = None
    for event in stream.stream(
        v1.list_pod_for_all_namespaces,
        field_selector="spec.nodeName=node-a",
        resource_version=listed.metadata.resource_version,
        allow_watch_bookmarks=True,
        timeout_seconds=10,
    ):
        if event["type"] == "BOOKMARK":
            if seen and seen[-1][0] == "DELETED":
                bookmark_after_delete = event["raw_object"]["metadata"]["resourceVersion"]
                stream.stop()
            continue
        pod = event["object"]
        assert isinstance(pod, client.V1Pod)
        seen.append((event["type"], pod.metadata.name))
        if event["type"] == "MODIFIED" and pod.metadata.deletion_timestamp is not None:
            assert pod.metadata.deletion_grace_period_seconds == 5
    writer.join()
    assert seen == [
        ("ADDED", "web-1"),
        ("MODIFIED", "web-1"),
        ("MODIFIED", "web-1"),
        ("DELETED", "web-1"),
    ]
    assert bookmark_after_delete == str(sim.store.resource_version)
    (request,) = sim.requests.watches("pods")
    assert request.params["allowWatchBookmarks"] == "true"
    assert request.params["timeoutSeconds"] == "10"
    assert request.params["resourceVersion"] == listed.metadata.resource_version
    assert request.params["fieldSelector"] == "spec.nodeName=node-a"


def test_watch_from_a_compacted_version_raises_410(
    sim: ThreadedApiServer, v1: client.CoreV1Api, make_pod: Factory
) -> None:
    sim.store.create("pods", make_pod("a"))
    old = v1.list_pod_for_all_namespaces().metadata.resource_version
    sim.store.create("pods", make_pod("b"))
    sim.store.compact()
    with pytest.raises(ApiException) as caught:
        for _ in watch.Watch().stream(
            v1.list_pod_for_all_namespaces, resource_version=str(int(old) - 1), timeout_seconds=5
        ):
            pass
    assert caught.value.status == 410
    assert "Expired: too old resource version" in str(caught.value.reason)


def test_expired_continue_raises_410(
    sim: ThreadedApiServer, v1: client.CoreV1Api, make_pod: Factory
) -> None:
    for i in range(3):
        sim.store.create("pods", make_pod(f"p{i}"))
    first = v1.list_pod_for_all_namespaces(limit=1)
    sim.store.create("pods", make_pod("p9"))
    sim.store.compact()
    with pytest.raises(ApiException) as caught:
        v1.list_pod_for_all_namespaces(limit=1, _continue=first.metadata._continue)
    assert caught.value.status == 410
    assert "The provided continue parameter is too old" in caught.value.body


def test_writes_through_the_client(sim: ThreadedApiServer, v1: client.CoreV1Api) -> None:
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="web", labels={"app": "web"}),
        spec=client.V1PodSpec(
            node_name="node-a",
            termination_grace_period_seconds=20,
            containers=[client.V1Container(name="app", image="registry.example/app:1")],
        ),
    )
    created = v1.create_namespaced_pod("default", pod)
    assert created.metadata.uid and created.metadata.resource_version and created.kind == "Pod"
    assert v1.read_namespaced_pod("web", "default").metadata.uid == created.metadata.uid
    patched = v1.patch_namespaced_pod(
        "web", "default", {"metadata": {"labels": {"track": "canary"}}}
    )
    assert patched.metadata.labels == {"app": "web", "track": "canary"}
    status = v1.patch_namespaced_pod_status("web", "default", {"status": {"phase": "Running"}})
    assert status.status.phase == "Running"
    current = v1.read_namespaced_pod("web", "default")
    current.metadata.labels = {"app": "web"}
    replaced = v1.replace_namespaced_pod("web", "default", current)
    assert replaced.metadata.labels == {"app": "web"}
    with pytest.raises(ApiException) as caught:
        v1.replace_namespaced_pod("web", "default", current)  # its version is stale now
    assert caught.value.status == 409
    terminating = v1.delete_namespaced_pod("web", "default")
    assert terminating.metadata.deletion_grace_period_seconds == 20
    v1.delete_namespaced_pod("web", "default", grace_period_seconds=0)
    with pytest.raises(ApiException) as caught:
        v1.read_namespaced_pod("web", "default")
    assert caught.value.status == 404
    assert [e.type for e in sim.store.history("pods")] == [
        "ADDED",
        "MODIFIED",
        "MODIFIED",
        "MODIFIED",
        "MODIFIED",
        "DELETED",
    ]


def test_services_and_endpoint_slices(
    sim: ThreadedApiServer, tmp_path: Path, make_service: Factory, make_endpoint_slice: Factory
) -> None:
    sim.store.create("services", make_service("web", labels={"tailwatch.io/probe": "true"}))
    sim.store.create("services", make_service("db"))
    sim.store.create("endpointslices", make_endpoint_slice("web-x1", "web"))
    with api_client(sim, tmp_path) as api:
        services = client.CoreV1Api(api).list_service_for_all_namespaces(
            label_selector="tailwatch.io/probe=true"
        )
        assert [s.metadata.name for s in services.items] == ["web"]
        slices = client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces(
            label_selector="kubernetes.io/service-name=web"
        )
        assert [s.metadata.name for s in slices.items] == ["web-x1"]
        assert slices.items[0].endpoints[0].conditions.ready is True
        stream = watch.Watch()
        for event in stream.stream(
            client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces, timeout_seconds=10
        ):
            assert isinstance(event["object"], client.V1EndpointSlice)
            assert (event["type"], event["object"].metadata.name) == ("ADDED", "web-x1")
            stream.stop()


def test_auth_and_rbac_failures(sim: ThreadedApiServer, tmp_path: Path) -> None:
    sim.faults.forbid("pods", verbs=["list"])
    with api_client(sim, tmp_path) as api:
        with pytest.raises(ApiException) as caught:
            client.CoreV1Api(api).list_pod_for_all_namespaces()
        assert caught.value.status == 403
    wrong = write_kubeconfig(tmp_path / "wrong", kubeconfig_dict(sim.url, token="wrong"))
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(wrong), client_configuration=cfg)
    with client.ApiClient(cfg) as api, pytest.raises(ApiException) as caught:
        client.CoreV1Api(api).list_service_for_all_namespaces()
    assert caught.value.status == 401


def test_call_runs_on_the_server_loop(sim: ThreadedApiServer, make_pod: Factory) -> None:
    async def create_in_loop() -> str:
        return sim.store.create("pods", make_pod("a"))["metadata"]["name"]

    assert sim.call(create_in_loop) == "a"
    assert sim.call(sim.store.get, "pods", "default", "a")["metadata"]["name"] == "a"
    with pytest.raises(Exception, match="not found"):
        sim.call(sim.store.get, "pods", "default", "missing")


def test_a_threaded_server_that_cannot_start_raises(sim: ThreadedApiServer) -> None:
    port = int(sim.url.rsplit(":", 1)[1])
    with pytest.raises(OSError), ThreadedApiServer(port=port):
        pass


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is not installed")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True)

    ca_extensions = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=sim-ca", *ca_extensions)  # fmt: skip
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


def test_tls_with_the_ca_in_the_kubeconfig(
    tls_files: dict[str, Path], tmp_path: Path, make_pod: Factory
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])
    with ThreadedApiServer(
        token=TOKEN, ssl_context=context, certificate_authority=tls_files["ca"].read_bytes()
    ) as sim:
        assert sim.url.startswith("https://127.0.0.1:")
        sim.store.create("pods", make_pod("secure"))
        kubeconfig = sim.kubeconfig()
        assert "certificate-authority-data" in kubeconfig["clusters"][0]["cluster"]
        with api_client(sim, tmp_path) as api:
            pods = client.CoreV1Api(api).list_pod_for_all_namespaces()
            assert [p.metadata.name for p in pods.items] == ["secure"]
    # Without a CA to embed, the kubeconfig has to skip verification.
    with ThreadedApiServer(token=TOKEN, ssl_context=context) as sim:
        assert sim.kubeconfig()["clusters"][0]["cluster"]["insecure-skip-tls-verify"] is True


def test_standalone_simulator(tmp_path: Path, make_pod: Factory) -> None:
    objects = tmp_path / "objects.yaml"
    objects.write_text(yaml.safe_dump_all([make_pod("seeded"), make_pod("other", node="node-b")]))
    kubeconfig = tmp_path / "kubeconfig"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter.simulator",
            "--kubeconfig",
            str(kubeconfig),
            "--objects",
            str(objects),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert lines[0].startswith("serving http://127.0.0.1:"), lines
        assert lines[1].strip() == f"kubeconfig: {kubeconfig}"
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        with client.ApiClient(cfg) as api:
            pods = client.CoreV1Api(api).list_pod_for_all_namespaces(
                field_selector="spec.nodeName=node-a"
            )
        assert [p.metadata.name for p in pods.items] == ["seeded"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr


async def test_apiserver_and_threaded_server_share_the_kubeconfig_format(tmp_path: Path) -> None:
    async with ApiServer(token=TOKEN) as server:
        path = server.write_kubeconfig(tmp_path / "kc")
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(path), client_configuration=cfg)
        assert cfg.host == server.url


def test_a_dropped_watch_is_a_protocol_error_for_the_client(
    sim: ThreadedApiServer, v1: client.CoreV1Api, wait_until: Any
) -> None:
    def drop() -> None:
        wait_until(lambda: sim.faults.open_watches == 1, what="the client's watch")
        sim.faults.drop_watches()

    dropper = threading.Thread(target=drop)
    dropper.start()
    with pytest.raises(urllib3.exceptions.ProtocolError):
        for _ in watch.Watch().stream(v1.list_pod_for_all_namespaces, timeout_seconds=10):
            pass
    dropper.join()
