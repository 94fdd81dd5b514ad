"""The composition root: the message → handler table, the one stream declaration, consumer
config changes applied in place, and stream settings that survive every process's start."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import AckPolicy

from libs.common import bootstrap, bus
from libs.common.bootstrap import ROUTES, Route, check_routes, subscriptions
from libs.common.config import Settings
from libs.common.events import (
    COMMANDS,
    EVENTS,
    BatchNightlyRequested,
    SymbolBatchCompleted,
    SymbolOnboardCompleted,
)
from libs.common.snapshots.refresh import JOB_CHUNK, JOB_PLAN, JOB_REQUEST
from services.onboarding.worker import JOB_TYPE as ONBOARD_JOB
from services.status_api.app import create_app
from services.symbol_batch.store import JOB_TYPE as BATCH_JOB
from sigmabatch.embedded import free_port, nats_server_binary

# -- the table -----------------------------------------------------------------------------


def test_every_command_has_exactly_one_handler_and_events_may_have_many() -> None:
    for command in COMMANDS:
        assert [r.message_type for r in ROUTES].count(command) == 1, command.subject
    assert {r.message_type for r in ROUTES} <= set(COMMANDS) | set(EVENTS)
    assert len({r.durable for r in ROUTES}) == len(ROUTES)
    two_listeners = (*ROUTES, Route(SymbolBatchCompleted, "analytics", "analytics-batch", "x"))
    check_routes(two_listeners)  # a second consumer of an event is fine
    with pytest.raises(ValueError, match="batch.nightly.requested has 2 handlers"):
        check_routes((*ROUTES, Route(BatchNightlyRequested, "other", "other-batch", "x")))
    with pytest.raises(ValueError, match="batch.nightly.requested has 0 handlers"):
        check_routes([r for r in ROUTES if r.message_type is not BatchNightlyRequested])
    with pytest.raises(ValueError, match="durable symbol-batch is used twice"):
        check_routes((*ROUTES, Route(SymbolBatchCompleted, "x", "symbol-batch", "x")))


def test_job_types_of_the_table_are_the_ones_the_handlers_record() -> None:
    by_durable = {r.durable: r.job_type for r in ROUTES}
    assert by_durable["symbol-batch"] == BATCH_JOB
    assert by_durable["onboarding-worker"] == ONBOARD_JOB
    assert by_durable["portfolio-refresh-batch"] == JOB_PLAN
    assert by_durable["portfolio-refresh-chunk"] == JOB_CHUNK
    assert by_durable["portfolio-refresh-request"] == JOB_REQUEST


async def _noop(message: object, delivery: bus.Delivery) -> None:
    return None


def test_a_service_binds_exactly_its_rows() -> None:
    settings = Settings(SIGMABATCH_ACK_WAIT_SECONDS=7, SIGMABATCH_MAX_DELIVER=4)
    subs = subscriptions("symbol_batch", settings, {BatchNightlyRequested: _noop})
    assert [(s.spec.durable, s.spec.ack_wait_seconds, s.spec.max_deliver) for s in subs] == [
        ("symbol-batch", 7, 4)]
    with pytest.raises(ValueError, match="missing"):
        subscriptions("onboarding", settings, {SymbolOnboardCompleted: _noop})
    with pytest.raises(ValueError, match="not routed to symbol_batch"):
        subscriptions("symbol_batch", settings,
                      {BatchNightlyRequested: _noop, SymbolOnboardCompleted: _noop})


# -- consumers: updated in place -----------------------------------------------------------


async def test_consumer_config_change_is_an_update_not_a_recreation(settings: Settings) -> None:
    connection = await bootstrap.connect_bus(settings, "test")
    try:
        topology, js = connection.topology, connection.js
        spec = bus.ConsumerSpec(durable="probe", message_type=SymbolBatchCompleted,
                                job_type="probe", ack_wait_seconds=30, max_deliver=5)
        await bus.ensure_consumer(js, topology, spec)
        for day in (1, 2, 3):
            await connection.publish(SymbolBatchCompleted(
                batch_date=dt.date(2026, 1, day), symbols_total=1, symbols_failed=0,
                status="completed", run_id=f"r{day}"))
        sub = await js.pull_subscribe_bind(durable="probe", stream=topology.events_stream)
        for msg in await sub.fetch(2, timeout=5):
            await msg.ack_sync()
        await sub.unsubscribe()
        before = await js.consumer_info(topology.events_stream, "probe")
        assert before.ack_floor.stream_seq == 2 and before.config.ack_policy == AckPolicy.EXPLICIT

        changed = bus.ConsumerSpec(durable="probe", message_type=SymbolBatchCompleted,
                                   job_type="probe", ack_wait_seconds=12, max_deliver=9)
        await bus.ensure_consumer(js, topology, changed)
        after = await js.consumer_info(topology.events_stream, "probe")
        assert (after.config.ack_wait, after.config.max_deliver) == (12, 9)
        assert after.created == before.created  # the same consumer, not a new one
        assert after.ack_floor.stream_seq == 2 and after.num_pending == 1  # nothing replayed
    finally:
        await connection.nc.close()


# -- streams: one declaration, replicas from settings ---------------------------------------


@contextlib.contextmanager
def nats_cluster(tmp: Path, size: int = 3) -> Iterator[list[str]]:
    """`size` JetStream nodes routed to each other (the wheel's nats-server)."""
    client_ports = [free_port() for _ in range(size)]
    route_ports = [free_port() for _ in range(size)]
    routes = ",".join(f"nats://127.0.0.1:{p}" for p in route_ports)
    processes = []
    try:
        for i in range(size):
            store = tmp / f"n{i}"
            store.mkdir()
            processes.append(subprocess.Popen(
                [str(nats_server_binary()), "-js", "-sd", str(store), "-a", "127.0.0.1",
                 "-p", str(client_ports[i]), "-n", f"n{i}", "--cluster_name", "sbtest",
                 "--cluster", f"nats://127.0.0.1:{route_ports[i]}", "--routes", routes],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield [f"nats://127.0.0.1:{p}" for p in client_ports]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)


async def _wait_for_jetstream(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            nc = await nats.connect(url, connect_timeout=1, allow_reconnect=False)
            try:
                await nc.jetstream().account_info()
                return
            finally:
                await nc.close()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


@pytest.fixture
async def cluster_settings(settings: Settings, tmp_path: Path) -> AsyncIterator[Settings]:
    with nats_cluster(tmp_path) as urls:
        await _wait_for_jetstream(urls[0])
        yield settings.model_copy(update={"nats_url": urls[0], "stream_replicas": 3,
                                          "event_retention_days": 3})


async def _stream_configs(settings: Settings) -> dict[str, tuple[int, float | None]]:
    nc = await nats.connect(settings.require_nats_url())
    try:
        js = nc.jetstream()
        topology = bootstrap.topology(settings)
        return {name: ((info := await js.stream_info(name)).config.num_replicas or 1,
                       info.config.max_age)
                for name in (topology.jobs_stream, topology.events_stream)}
    finally:
        await nc.close()


async def test_stream_replicas_survive_a_status_api_start(cluster_settings: Settings) -> None:
    settings = cluster_settings
    service = await bootstrap.connect_bus(settings, "a-service")  # a service declares first
    await service.nc.close()
    declared = await _stream_configs(settings)
    assert [replicas for replicas, _ in declared.values()] == [3, 3]

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        deadline = time.monotonic() + 20
        while app.state.api.js is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert app.state.api.js is not None
        assert await _stream_configs(settings) == declared
    events_max_age = declared[bootstrap.topology(settings).events_stream][1]
    assert events_max_age == pytest.approx(3 * 86400)
