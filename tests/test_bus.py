"""The bus helpers against a real JetStream: dedupe, redelivery, dead letters, shutdown."""

from __future__ import annotations

import asyncio
import datetime as dt

import nats
import pytest

from libs.common import bus
from libs.common.events import BatchNightlyRequested, SymbolBatchCompleted
from libs.common.service import ServiceContext


def nightly_spec(ctx: ServiceContext, **kwargs) -> bus.ConsumerSpec:
    kwargs.setdefault("ack_wait_seconds", 1.0)
    kwargs.setdefault("max_deliver", 3)
    kwargs.setdefault("nak_delays", (0.05,))
    return bus.ConsumerSpec("symbol_batch", BatchNightlyRequested, "symbol_batch", **kwargs)


async def run_until(ctx, spec, handler, predicate, timeout=15.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(
        bus.consume(ctx.js, ctx.topology, spec, handler, stop, dead_letter=ctx.dead_letter)
    )
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_publish_sets_msg_id_and_jetstream_drops_the_repeat(ctx: ServiceContext) -> None:
    event = BatchNightlyRequested(target_date=dt.date(2024, 3, 1), requested_by="cron-a")
    repeat = BatchNightlyRequested(target_date=dt.date(2024, 3, 1), requested_by="cron-b")
    assert await ctx.publish(event) is True
    assert await ctx.publish(repeat) is False  # same business key: nightly:2024-03-01
    assert await ctx.publish(BatchNightlyRequested(target_date=dt.date(2024, 3, 4))) is True
    info = await ctx.js.stream_info(ctx.topology.jobs_stream)
    assert info.state.messages == 2


async def test_handler_success_acks_and_the_work_queue_empties(ctx: ServiceContext) -> None:
    seen: list[BatchNightlyRequested] = []

    async def handler(message, delivery):
        seen.append(message)

    await ctx.publish(BatchNightlyRequested(target_date=dt.date(2024, 3, 1)))
    await run_until(ctx, nightly_spec(ctx), handler, lambda: len(seen) == 1)
    await asyncio.sleep(0.2)
    info = await ctx.js.stream_info(ctx.topology.jobs_stream)
    assert info.state.messages == 0 and seen[0].target_date == dt.date(2024, 3, 1)


async def test_message_comes_back_when_a_consumer_dies_without_ack(
    ctx: ServiceContext, servers
) -> None:
    spec = nightly_spec(ctx, ack_wait_seconds=1.0)
    await bus.ensure_consumer(ctx.js, ctx.topology, spec)
    await ctx.publish(BatchNightlyRequested(target_date=dt.date(2024, 3, 1)))
    # A first worker takes the message and dies (its connection closes) without acking.
    dying = await nats.connect(servers.nats_url)
    sub = await dying.jetstream().pull_subscribe_bind(
        durable=spec.durable, stream=ctx.topology.jobs_stream
    )
    (taken,) = await sub.fetch(1, timeout=5)
    assert taken.metadata.num_delivered == 1
    await dying.close()

    deliveries: list[int] = []

    async def handler(message, delivery):
        deliveries.append(delivery.num_delivered)

    await run_until(ctx, spec, handler, lambda: deliveries)
    assert deliveries == [2]


async def test_failing_handler_is_retried_then_dead_lettered_visibly(ctx: ServiceContext) -> None:
    attempts: list[int] = []

    async def handler(message, delivery):
        attempts.append(delivery.num_delivered)
        raise RuntimeError("provider unreachable")

    await ctx.publish(BatchNightlyRequested(target_date=dt.date(2024, 3, 1)))
    spec = nightly_spec(ctx, max_deliver=3)
    row = {}

    async def dead():
        return await ctx.jobs.latest("symbol_batch", "nightly:2024-03-01")

    async def poll():
        while not row:
            found = await dead()
            if found:
                row.update(found)
            await asyncio.sleep(0.05)

    stop = asyncio.Event()
    task = asyncio.create_task(
        bus.consume(ctx.js, ctx.topology, spec, handler, stop, dead_letter=ctx.dead_letter)
    )
    await asyncio.wait_for(poll(), 20)
    await asyncio.sleep(1.5)  # nothing more is delivered after the dead letter
    stop.set()
    await task
    assert attempts == [1, 2, 3]
    assert row["status"] == "failed" and "provider unreachable" in row["error"]
    assert row["result"]["deliveries"] == 3


async def test_invalid_payload_is_dead_lettered_at_once(ctx: ServiceContext) -> None:
    await ctx.js.publish(
        ctx.topology.subject(BatchNightlyRequested.subject),
        b'{"target_date": "not a date"}',
        headers={"Nats-Msg-Id": "nightly:garbage"},
    )
    calls: list[object] = []

    async def handler(message, delivery):
        calls.append(message)

    found: dict = {}

    async def check():
        row = await ctx.jobs.latest("symbol_batch", "nightly:garbage")
        if row:
            found.update(row)

    stop = asyncio.Event()
    task = asyncio.create_task(
        bus.consume(
            ctx.js, ctx.topology, nightly_spec(ctx), handler, stop, dead_letter=ctx.dead_letter
        )
    )
    async with asyncio.timeout(10):
        while not found:
            await check()
            await asyncio.sleep(0.05)
    stop.set()
    await task
    assert calls == [] and "invalid BatchNightlyRequested payload" in found["error"]


async def test_long_handler_heartbeats_past_ack_wait_without_redelivery(
    ctx: ServiceContext,
) -> None:
    deliveries: list[int] = []

    async def slow(message, delivery):
        deliveries.append(delivery.num_delivered)
        await asyncio.sleep(3.0)  # three times AckWait

    await ctx.publish(BatchNightlyRequested(target_date=dt.date(2024, 3, 1)))
    spec = nightly_spec(ctx, ack_wait_seconds=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(bus.consume(ctx.js, ctx.topology, spec, slow, stop))
    await asyncio.sleep(4.5)
    stop.set()
    await task
    assert deliveries == [1]


async def test_events_have_one_durable_per_consumer_each_gets_every_event(
    ctx: ServiceContext,
) -> None:
    event = SymbolBatchCompleted(
        batch_date=dt.date(2024, 3, 1), status="completed", symbols_total=3, run_id="r1"
    )
    await ctx.publish(event)
    got: dict[str, list] = {"a": [], "b": []}

    def handler_for(name):
        async def handler(message, delivery):
            got[name].append(message.batch_date)
            if name == "b":
                raise RuntimeError("b's own failure")

        return handler

    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(
            bus.consume(
                ctx.js,
                ctx.topology,
                bus.ConsumerSpec(
                    f"consumer_{n}",
                    SymbolBatchCompleted,
                    f"job_{n}",
                    ack_wait_seconds=1.0,
                    max_deliver=2,
                    nak_delays=(0.05,),
                ),
                handler_for(n),
                stop,
                dead_letter=ctx.dead_letter,
            )
        )
        for n in ("a", "b")
    ]
    async with asyncio.timeout(10):
        while len(got["a"]) < 1 or len(got["b"]) < 2:
            await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*tasks)
    assert got["a"] == [dt.date(2024, 3, 1)]  # a's handler is unaffected by b's failures
    info = await ctx.js.stream_info(ctx.topology.events_stream)
    assert info.state.messages == 1  # events are kept (limits stream), not consumed away


@pytest.mark.parametrize(
    "prefix,expected", [("", "SIGMABATCH_JOBS"), ("t.x", "T_X_SIGMABATCH_JOBS")]
)
def test_topology_names(prefix: str, expected: str) -> None:
    assert bus.Topology(prefix).jobs_stream == expected


async def test_message_nobody_settled_at_max_deliver_is_recorded_and_removed(
    ctx: ServiceContext,
) -> None:
    """Issue 12 finding 3: the last delivery could not write its dead letter (PostgreSQL
    down), so the message reached MaxDeliver unsettled and sat in the work queue, unseen.
    The MAX_DELIVERIES advisory consumer records it as the failed job (by its job key, with
    the payload to re-drive it) and deletes it."""
    spec = nightly_spec(ctx, max_deliver=2, ack_wait_seconds=1.0, nak_delays=(0.2,),
                        job_key=lambda m: m.target_date.isoformat())

    async def failing(message, delivery) -> None:
        raise RuntimeError("database unreachable")

    async def unwritable_dead_letter(*args) -> None:
        raise ConnectionError("database unreachable")

    await bus.ensure_consumer(ctx.js, ctx.topology, spec)
    await ctx.publish(BatchNightlyRequested(target_date=dt.date(2024, 3, 1)))
    stop = asyncio.Event()
    loops = [
        asyncio.create_task(bus.consume(ctx.js, ctx.topology, spec, failing, stop,
                                        dead_letter=unwritable_dead_letter)),
        asyncio.create_task(bus.consume_max_deliveries(ctx.js, ctx.topology, spec,
                                                       ctx.dead_letter, stop)),
    ]
    try:
        deadline = asyncio.get_running_loop().time() + 30
        row = None
        while row is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.3)
            row = await ctx.jobs.latest(spec.job_type, "2024-03-01")
    finally:
        stop.set()
        await asyncio.gather(*loops, return_exceptions=True)
    assert row is not None, "the unsettled message was never recorded"
    assert row["status"] == "failed" and "MaxDeliver" in row["error"]
    assert row["result"]["subject"] == BatchNightlyRequested.subject
    assert '"2024-03-01"' in row["result"]["payload"]
    info = await ctx.js.stream_info(ctx.topology.jobs_stream)
    assert info.state.messages == 0
