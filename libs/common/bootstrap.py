"""The composition root: the one place that builds what a sigmabatch process runs on.

Every process (the four services, the API, the CLI) gets from here:
- settings (`Settings`, from the environment) and the database engine;
- its bus connection, with the ONE declaration of both streams (`declare_streams`: subjects,
  retention, duplicate window and the deployment's replicas, so no process resets what
  another declared);
- the message → handler table (`ROUTES`): which durable consumer of which service handles each
  message type. A command has exactly one consumer (its work-queue stream delivers each
  message once); an event may have many, each with its own durable, so each handler's failure
  is its own. Services bind their handler callables to their rows with `subscriptions`, which
  refuses a handler the table does not list or a listed message left without one.

The table lives here, not in the services, so that one look shows every flow, and a test
checks it against `events.COMMANDS` / `events.EVENTS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.common import bus
from libs.common.config import Settings, get_settings
from libs.common.db import get_engine
from libs.common.events import (
    COMMANDS,
    EVENTS,
    BatchNightlyRequested,
    Message,
    PortfolioRefreshChunkRequested,
    PortfolioRefreshRequested,
    SymbolBatchCompleted,
    SymbolOnboardCompleted,
    SymbolOnboardRequested,
)

# -- job keys: the key each handler runs its job under (so a dead letter closes that row) --


def nightly_job_key(message: BatchNightlyRequested) -> str:
    """The requested date; a request for the latest date is keyed once resolved."""
    return message.target_date.isoformat() if message.target_date else "latest"


def onboard_job_key(message: SymbolOnboardRequested) -> str:
    return message.symbol.upper()


def refresh_request_job_key(message: PortfolioRefreshRequested) -> str:
    """`<portfolio>:<date>`; a request without a date is keyed by its date once resolved."""
    day = message.as_of.isoformat() if message.as_of else "latest"
    return f"{message.portfolio_id}:{day}"


def refresh_chunk_job_key(message: PortfolioRefreshChunkRequested) -> str:
    return message.message_id().removeprefix("refresh-chunk:")


def refresh_plan_job_key(message: SymbolBatchCompleted) -> str:
    """A date's plan; a restatement of the date is its own job."""
    day = message.batch_date.isoformat()
    return f"{day}:restate:{message.run_id}" if message.restate else day


@dataclass(frozen=True)
class Route:
    """One row of the message → handler table."""

    message_type: type[Message]
    service: str
    durable: str
    job_type: str  # names the jobs and dead letters this consumer records
    concurrency: int = 1  # consume loops per process sharing the durable
    batch: int = 1
    job_key: Callable[[Any], str] | None = None  # the handler's job key (default: msg id)


ROUTES: tuple[Route, ...] = (
    # commands: exactly one consumer each
    Route(BatchNightlyRequested, "symbol_batch", "symbol-batch", "symbol_batch",
          job_key=nightly_job_key),
    # Pulled 25 at a time and handled together: their vendor calls are coalesced.
    Route(SymbolOnboardRequested, "onboarding", "onboarding-worker", "symbol_onboard",
          concurrency=2, batch=25, job_key=onboard_job_key),
    Route(PortfolioRefreshRequested, "portfolio_refresh", "portfolio-refresh-request",
          "portfolio_refresh_request", concurrency=2, batch=32, job_key=refresh_request_job_key),
    Route(PortfolioRefreshChunkRequested, "portfolio_refresh", "portfolio-refresh-chunk",
          "portfolio_refresh_chunk", job_key=refresh_chunk_job_key),
    # events: any number of consumers, each its own durable
    Route(SymbolBatchCompleted, "portfolio_refresh", "portfolio-refresh-batch",
          "portfolio_refresh", job_key=refresh_plan_job_key),
    Route(SymbolOnboardCompleted, "onboarding", "onboarding-coordinator",
          "onboarding_coordinator"),
)


def check_routes(routes: Sequence[Route]) -> None:
    """Raise ValueError unless every command has exactly one route, every route names a
    known message and no two routes share a durable."""
    problems: list[str] = []
    for command in COMMANDS:
        count = sum(1 for r in routes if r.message_type is command)
        if count != 1:
            problems.append(f"command {command.subject} has {count} handlers (needs exactly 1)")
    known = set(COMMANDS) | set(EVENTS)
    problems += [f"{r.message_type.__name__} is neither a command nor an event"
                 for r in routes if r.message_type not in known]
    durables = [r.durable for r in routes]
    problems += [f"durable {d} is used twice" for d in sorted(set(durables))
                 if durables.count(d) > 1]
    if problems:
        raise ValueError("; ".join(problems))


check_routes(ROUTES)


def routes_of(service: str, routes: Sequence[Route] = ROUTES) -> tuple[Route, ...]:
    return tuple(r for r in routes if r.service == service)


def consumer_spec(route: Route, settings: Settings) -> bus.ConsumerSpec[Any]:
    """The durable consumer of a route with this deployment's AckWait and MaxDeliver."""
    return bus.ConsumerSpec(durable=route.durable, message_type=route.message_type,
                            job_type=route.job_type, job_key=route.job_key,
                            ack_wait_seconds=settings.ack_wait_seconds,
                            max_deliver=settings.max_deliver, replicas=settings.stream_replicas)


@dataclass
class Subscription:
    """A consumer and its handler; `concurrency` loops share the durable inside one process."""

    spec: bus.ConsumerSpec[Any]
    handler: bus.Handler[Any]
    concurrency: int = 1
    batch: int = 1


def subscriptions(service: str, settings: Settings,
                  handlers: Mapping[type[Message], bus.Handler[Any]],
                  routes: Sequence[Route] = ROUTES) -> list[Subscription]:
    """Bind a service's handlers to its rows of the table (every row, nothing else)."""
    mine = routes_of(service, routes)
    wanted = {r.message_type for r in mine}
    if set(handlers) != wanted:
        missing = sorted(m.__name__ for m in wanted - set(handlers))
        extra = sorted(m.__name__ for m in set(handlers) - wanted)
        raise ValueError(f"{service}: handlers do not match the routes table "
                         f"(missing {missing}, not routed to {service}: {extra})")
    return [Subscription(consumer_spec(r, settings), handlers[r.message_type],
                         concurrency=r.concurrency, batch=r.batch) for r in mine]


# -- settings, database, bus ---------------------------------------------------------------


def settings() -> Settings:
    return get_settings()


def engine(settings: Settings) -> AsyncEngine:
    return get_engine(settings.require_database_url())


def topology(settings: Settings) -> bus.Topology:
    return bus.Topology(settings.bus_prefix)


async def declare_streams(js: JetStreamContext, settings: Settings) -> bus.Topology:
    """Both streams as this deployment configures them (the one declaration every process
    uses); returns its topology."""
    names = topology(settings)
    await bus.ensure_streams(
        js,
        names,
        duplicate_window_seconds=settings.duplicate_window_seconds,
        event_retention_days=settings.event_retention_days,
        replicas=settings.stream_replicas,
    )
    return names


@dataclass
class BusConnection:
    nc: NATS
    js: JetStreamContext
    topology: bus.Topology

    async def publish(self, message: Message) -> bool:
        return await bus.publish(self.js, self.topology, message)


async def connect_bus(settings: Settings, name: str, *, long_lived: bool = True,
                      nats_url: str | None = None) -> BusConnection:
    """Connect and declare the streams. A long-lived connection (services, the API)
    reconnects forever; a short one (a CLI command) fails fast instead."""
    url = nats_url or settings.require_nats_url()
    nc = await bus.connect(url, name, settings, reconnect=long_lived)
    js = nc.jetstream()
    return BusConnection(nc, js, await declare_streams(js, settings))
