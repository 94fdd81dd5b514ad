"""The runner every service's `__main__` uses (what it runs is composed in `bootstrap`).

It connects (and keeps reconnecting) to PostgreSQL and NATS, refuses to run on an
unmigrated database, declares streams and durable consumers, runs the consume loops, answers
liveness on an optional port, and on SIGTERM finishes the message in hand before exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy import text
from tenacity import AsyncRetrying, retry_if_not_exception_type, wait_exponential_jitter

from libs.common import bootstrap, bus
from libs.common.bootstrap import Subscription
from libs.common.config import Settings, get_settings
from libs.common.db import dispose_engines
from libs.common.events import Message
from libs.common.jobs import JobTracker
from libs.common.logs import configure_logging
from libs.common.migrate import DatabaseNotMigrated, ensure_migrated

log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    """What handlers get instead of globals: settings, connections, publish, the job tracker."""

    name: str
    settings: Settings
    database_url: str
    topology: bus.Topology
    nc: NATS
    js: JetStreamContext
    jobs: JobTracker

    async def publish(self, message: Message) -> bool:
        return await bus.publish(self.js, self.topology, message)

    async def dead_letter(
        self, spec: bus.ConsumerSpec[Any], key: str, payload: bytes, error: str, deliveries: int
    ) -> None:
        await self.jobs.record_dead_letter(
            spec.job_type, key, error, payload, deliveries, subject=spec.message_type.subject
        )

    def consumer(
        self, durable: str, message_type: type[Message], job_type: str, **kwargs: Any
    ) -> bus.ConsumerSpec[Any]:
        """A ConsumerSpec with this deployment's AckWait and MaxDeliver."""
        kwargs.setdefault("ack_wait_seconds", self.settings.ack_wait_seconds)
        kwargs.setdefault("max_deliver", self.settings.max_deliver)
        kwargs.setdefault("replicas", self.settings.stream_replicas)
        return bus.ConsumerSpec(
            durable=durable, message_type=message_type, job_type=job_type, **kwargs
        )


@dataclass
class ServiceDefinition:
    name: str
    subscriptions: Callable[[ServiceContext], Sequence[Subscription]]
    # Work to do once connected, before consuming (e.g. re-publish pending requests).
    on_start: Callable[[ServiceContext], Awaitable[None]] | None = None
    background: Sequence[Callable[[ServiceContext, asyncio.Event], Coroutine[Any, Any, None]]] = field(
        default_factory=tuple
    )


async def connect_context(name: str, settings: Settings | None = None) -> ServiceContext:
    """Connect to both servers (retrying while they come up) and declare the streams."""
    settings = settings or get_settings()
    database_url = settings.require_database_url()
    nats_url = settings.require_nats_url()
    engine = bootstrap.engine(settings)

    async for attempt in AsyncRetrying(
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0),
        retry=retry_if_not_exception_type(DatabaseNotMigrated),
        before_sleep=lambda state: log.warning(
            "waiting for PostgreSQL: %s", state.outcome.exception() if state.outcome else "?"
        ),
        reraise=True,
    ):
        with attempt:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            await ensure_migrated(engine)

    bus_connection = await bootstrap.connect_bus(settings, name, nats_url=nats_url)
    jobs = JobTracker(
        database_url,
        stale_after_seconds=settings.job_stale_after_seconds,
        owner_wait_seconds=settings.ack_wait_seconds,
    )
    return ServiceContext(name, settings, database_url, bus_connection.topology,
                          bus_connection.nc, bus_connection.js, jobs)


async def _health_server(ctx: ServiceContext, port: int) -> asyncio.Server:
    """Liveness: 200 while the NATS connection is up, 503 otherwise."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=2)
            ok = ctx.nc.is_connected
            body = json.dumps({"service": ctx.name, "nats_connected": ok}).encode()
            status = b"200 OK" if ok else b"503 Service Unavailable"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                b"Content-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", port)
    bound = server.sockets[0].getsockname()[1]
    log.info("liveness on http://127.0.0.1:%d/healthz", bound)
    return server


async def run_service(definition: ServiceDefinition, settings: Settings | None = None) -> None:
    """Run until SIGTERM/SIGINT; the message in hand is finished (or nak'ed) first."""
    settings = settings or get_settings()
    ctx = await connect_context(definition.name, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    health = None
    if settings.health_port >= 0:
        health = await _health_server(ctx, settings.health_port)
    if definition.on_start is not None:
        await definition.on_start(ctx)

    tasks: list[asyncio.Task[None]] = []
    subscriptions = definition.subscriptions(ctx)
    for sub in subscriptions:
        await bus.ensure_consumer(ctx.js, ctx.topology, sub.spec)
    for sub in subscriptions:
        for _ in range(sub.concurrency):
            tasks.append(
                asyncio.create_task(
                    bus.consume(
                        ctx.js,
                        ctx.topology,
                        sub.spec,
                        sub.handler,
                        stop,
                        dead_letter=ctx.dead_letter,
                        batch=sub.batch,
                    )
                )
            )
    for sub in subscriptions:
        tasks.append(
            asyncio.create_task(
                bus.consume_max_deliveries(ctx.js, ctx.topology, sub.spec, ctx.dead_letter, stop)
            )
        )
    takeover = settings.job_stale_after_seconds + settings.ack_wait_seconds
    for sub in subscriptions:
        budget = sub.spec.retry_budget_seconds(ctx.jobs.owner_wait_seconds)
        if budget <= takeover:
            log.warning(
                "%s: retry budget %.0fs is shorter than the takeover of a silent owner's job "
                "(%.0fs): a redelivery may be dead-lettered before it can resume the work",
                sub.spec.durable, budget, takeover,
            )
    for background in definition.background:
        tasks.append(asyncio.create_task(background(ctx, stop)))
    log.info("%s ready (%d consumers)", definition.name, len(subscriptions))

    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    crashed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
    grace = settings.ack_wait_seconds
    _, pending = await asyncio.wait(tasks, timeout=grace) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if health is not None:
        health.close()
    with contextlib.suppress(Exception):
        await ctx.nc.drain()
    await dispose_engines()
    log.info("%s stopped", definition.name)
    if crashed:
        raise crashed[0].exception()  # type: ignore[misc]


def main(definition: ServiceDefinition) -> None:
    """Entry point of `python -m services.<name>`."""
    settings = get_settings()
    configure_logging(definition.name, settings.log_level)
    try:
        asyncio.run(run_service(definition, settings))
    except DatabaseNotMigrated as exc:
        log.error("%s", exc)
        print(f"{definition.name}: {exc}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as exc:
        if "is not set" in str(exc):
            print(f"{definition.name}: {exc}", file=sys.stderr)
            sys.exit(2)
        raise
