"""`sigmabatch up --nats-nodes 3`: three clustered nats-servers, R3 streams, runtime.json.

The supervisor runs without services here (the services on a cluster are the subject of
tests/e2e/test_cluster.py); what is checked is what `up` itself promises: three live nodes
listed with URL and pid, streams declared with three replicas by a trigger run from another
shell (which reads the replica count from runtime.json), and a node that dies and comes back
rejoining with its store.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import nats
import psutil
import pytest

from libs.common import bus
from libs.common.config import get_settings
from sigmabatch.cli import resolve_stream_replicas
from sigmabatch.supervisor import Supervisor
from sigmabatch.trigger import publish_nightly
from tests.polling import eventually


@pytest.fixture
def cluster_env(
    monkeypatch: pytest.MonkeyPatch, database_url: str, bus_prefix: str
) -> Iterator[None]:
    monkeypatch.delenv("NATS_URL", raising=False)
    monkeypatch.delenv("SIGMABATCH_STREAM_REPLICAS", raising=False)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("SIGMABATCH_BUS_PREFIX", bus_prefix)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def _stream_peers(url: str, prefix: str) -> dict[str, tuple[int, int]]:
    nc = await bus.connect(url, "probe", reconnect=False)
    try:
        js = nc.jetstream()
        topology = bus.Topology(prefix)
        out = {}
        for name in (topology.jobs_stream, topology.events_stream):
            info = await js.stream_info(name)
            out[name] = (info.config.num_replicas, len(bus.cluster_summary(info.cluster)["peers"]))
        return out
    finally:
        await nc.close()


async def test_up_with_three_nats_nodes(cluster_env: None, tmp_path: Path, bus_prefix: str) -> None:
    supervisor = Supervisor(data_dir=tmp_path / "data", api_port=0, services=(), nats_nodes=3)
    try:
        await supervisor.start()
        runtime = json.loads((supervisor.data_dir / "runtime.json").read_text())
        nodes = runtime["nats_nodes"]
        assert len(nodes) == 3 and runtime["stream_replicas"] == 3
        assert runtime["nats_url"] == ",".join(n["url"] for n in nodes)
        assert len({n["name"] for n in nodes}) == 3
        assert all(psutil.Process(n["pid"]).name().startswith("nats-server") for n in nodes)

        # A trigger from another shell keeps the cluster's R3 (read from runtime.json).
        replicas = resolve_stream_replicas(supervisor.data_dir)
        assert replicas == 3
        _, published = await publish_nightly(
            runtime["nats_url"], None, "test", rerun=False, replicas=replicas
        )
        assert published
        async def three_current() -> dict | None:
            found = await _stream_peers(runtime["nats_url"], bus_prefix)
            return found if all(p == (3, 3) for p in found.values()) else None

        peers = await eventually(three_current, 30, "three current replicas per stream",
                                 interval=0.2)

        # One node killed and started again rejoins with its store: three replicas current.
        cluster = supervisor.nats
        node = cluster.nodes[0]  # type: ignore[union-attr]
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(10)
        node.stop()
        await asyncio.to_thread(node.start)
        await asyncio.to_thread(cluster.wait_healthy)  # type: ignore[union-attr]
        # JetStream answers once the restarted node's streams have their leaders again; until
        # then an API request may time out (seen in CI): ask until the peers are back.
        async def peers_back() -> bool:
            try:
                return await _stream_peers(runtime["nats_url"], bus_prefix) == peers
            except nats.errors.TimeoutError:
                return False

        await eventually(peers_back, 30, "the streams' peers after the node's restart",
                         interval=0.5)
    finally:
        await supervisor.stop()
    assert not (tmp_path / "data" / "runtime.json").exists()
    assert all(
        not psutil.pid_exists(n["pid"]) or psutil.Process(n["pid"]).status() == "zombie"
        for n in nodes
    )
