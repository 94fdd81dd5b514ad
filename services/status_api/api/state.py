"""What the API process holds for its lifetime, typed (instead of loose `app.state` attributes).

`create_app` builds one `ApiState`; `api.deps` hands it (or a part of it) to the routes.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

import asyncpg
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, Counter, Histogram

from libs.common import bus
from libs.common.auth import Caller, TokenCache
from libs.common.clerk import ClerkVerifier
from libs.common.config import Settings
from libs.common.domain.statuses import FINISHED_ONBOARDING_STATUSES
from libs.common.events import Message
from libs.common.onboarding.upload import SnapshotMaker

log = logging.getLogger(__name__)


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    uploads: Counter

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter("sigmabatch_http_requests_total", "HTTP requests",
                             ["method", "route", "status"], registry=registry),
            latency=Histogram("sigmabatch_http_request_seconds", "HTTP request latency",
                              ["method", "route"], registry=registry,
                              buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)),
            uploads=Counter("sigmabatch_uploads_total", "Portfolio uploads by outcome",
                            ["outcome"], registry=registry),
        )


FINISHED = FINISHED_ONBOARDING_STATUSES


class FinishedStatusCache:
    """Status documents of finished onboardings, which never change again.

    Nothing is written for a portfolio once its onboarding is completed/partial/failed
    (its elapsed time is frozen at finished_at), so every replica may keep the bytes; a
    running onboarding is always read from the database.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._bodies: dict[tuple[uuid.UUID, uuid.UUID], bytes] = {}

    def get(self, key: tuple[uuid.UUID, uuid.UUID]) -> bytes | None:
        return self._bodies.get(key)

    def put(self, key: tuple[uuid.UUID, uuid.UUID], body: bytes) -> None:
        if len(self._bodies) >= self.capacity:
            self._bodies.clear()
        self._bodies[key] = body


@dataclass
class ApiState:
    """The process's settings, connections and caches (one per app)."""

    settings: Settings
    database_url: str
    topology: bus.Topology
    snapshot_maker: SnapshotMaker | None = None
    clerk: ClerkVerifier | None = None  # None: Clerk session tokens are refused (not configured)
    token_cache: TokenCache = field(default_factory=TokenCache)
    status_cache: FinishedStatusCache = field(default_factory=FinishedStatusCache)
    metrics: Metrics = field(default_factory=Metrics.create)
    # Set by the lifespan: the raw pool of the polled status endpoint, and the bus once NATS
    # answers (None until then: reads work without it).
    pg_pool: asyncpg.Pool | None = None
    nc: NatsClient | None = None
    js: JetStreamContext | None = None
    local_caller: Caller | None = None  # the caller when auth is disabled, once created

    async def publish(self, message: Message) -> bool:
        """Best effort after a commit: the onboarding reconciler re-publishes what fails."""
        if self.js is None:
            log.warning("NATS not connected: %s left to the reconciler", message.message_id())
            return False
        try:
            return await bus.publish(self.js, self.topology, message)
        except Exception as exc:
            log.warning("publish of %s failed (%s): left to the reconciler",
                        message.message_id(), exc)
            return False
