"""The whole agent with TLS and --auth=kubernetes against the simulated API server: a scrape
needs a token the API server authenticates and a rule that allows it, the probes stay open,
and the answers are reused."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from exporter.agent import Agent
from exporter.simulator import ApiServer
from tests.agent.conftest import running_agent
from tests.certs import CertificateAuthority

PROMETHEUS = "system:serviceaccount:monitoring:prometheus"


@pytest.fixture
async def secured(
    api: ApiServer, kubeconfig: Path, tmp_path: Path
) -> AsyncIterator[tuple[Agent, ssl.SSLContext]]:
    """The agent serving https with a certificate of a test CA, and a client context that
    trusts only that CA."""
    ca = CertificateAuthority.create(tmp_path / "pki")
    issued = ca.issue("agent", dns_names=("localhost",), ips=("127.0.0.1",))
    cgroups = tmp_path / "cgroup"
    cgroups.mkdir()
    async with running_agent(
        kubeconfig,
        cgroups,
        tls_cert_file=str(issued.cert_file),
        tls_key_file=str(issued.key_file),
        auth="kubernetes",
    ) as agent:
        yield agent, ssl.create_default_context(cafile=str(ca.cert_file))


async def fetch(
    agent: Agent, context: ssl.SSLContext, path: str, token: str | None = None
) -> tuple[int, str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    url = f"https://{agent.settings.listen}{path}"
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers, ssl=context) as r:
        return r.status, await r.text(), r.headers


async def test_only_an_allowed_token_reads_the_agent(
    api: ApiServer, secured: tuple[Agent, ssl.SSLContext]
) -> None:
    agent, context = secured
    reviews = api.reviews
    reviews.add_service_account_token("prom-token", "monitoring", "prometheus")
    reviews.add_service_account_token("grafana-token", "monitoring", "grafana")
    reviews.allow(user=PROMETHEUS, paths=["/metrics", "/api/v1/*"])

    # The kubelet's probes need no token.
    assert (await fetch(agent, context, "/healthz"))[:2] == (200, "ok\n")
    assert (await fetch(agent, context, "/readyz"))[:2] == (200, "ready\n")
    status, _, headers = await fetch(agent, context, "/metrics")
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="tailwatch"'
    assert (await fetch(agent, context, "/metrics", "forged"))[0] == 401
    assert (await fetch(agent, context, "/api/v1/episodes", "grafana-token"))[0] == 403

    status, text, _ = await fetch(agent, context, "/metrics", "prom-token")
    assert status == 200
    assert "tailwatch_build_info{" in text
    assert 'tailwatch_dropped_total{reason="auth_unauthenticated"} 2' in text
    assert 'tailwatch_dropped_total{reason="auth_forbidden"} 1' in text
    # A second scrape is answered from the cache: no new review.
    before = (reviews.token_reviews, reviews.access_reviews)
    assert before == (3, 2)
    assert (await fetch(agent, context, "/metrics", "prom-token"))[0] == 200
    assert (reviews.token_reviews, reviews.access_reviews) == before
    status, text, _ = await fetch(agent, context, "/api/v1/targets", "prom-token")
    assert status == 200
    assert '"node": "node-a"' in text
    assert (reviews.token_reviews, reviews.access_reviews) == (3, 3)  # a new path only

    # Plain HTTP is not served: a token never travels in clear to the agent.
    plain = f"http://{agent.settings.listen}/metrics"
    with pytest.raises(aiohttp.ClientError):
        async with aiohttp.ClientSession() as http, http.get(plain) as resp:
            await resp.read()

    # The reviews came from the agent, with its own credentials and User-Agent.
    made = api.requests.matching("create", "tokenreviews") + api.requests.matching(
        "create", "subjectaccessreviews"
    )
    assert len(made) == 6
    assert {r.status for r in made} == {201}
    assert {r.client.split(" ")[-1] for r in made} == {"node/node-a"}
