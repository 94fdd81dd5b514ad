"""The message bus at the edge: streams, durable consumers, one publish helper, one consume loop.

Two streams: commands (`*.requested`) live in a work-queue stream (a message is removed
once acked, and each subject has exactly one durable consumer, shared by all replicas of
its service); events (`*.completed`) live in a limits stream kept for days, where every
interested service has its own durable consumer, so each handler's failure is its own.

Delivery is at-least-once. Publishes carry `Nats-Msg-Id` (JetStream drops repeats inside the
duplicate window) and handlers are idempotent in the database beyond it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ClusterInfo,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    BadRequestError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from libs.common.config import Settings, get_settings
from libs.common.events import COMMANDS, EVENTS, Message

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"


class TransientError(Exception):
    """A failure worth retrying later (provider down, lock held): nak with a delay."""


class PermanentError(Exception):
    """A failure no retry will fix (bad payload, unknown portfolio): dead-letter now."""


class RetryAfter(TransientError):
    """Not now, and not the message's fault (e.g. the vendor's circuit is open): nak with
    exactly this delay. Like any retry it counts as a delivery, so a handler raises it only
    while deliveries remain (on the last one it should wait in hand instead)."""

    def __init__(self, delay: float, reason: str = "") -> None:
        super().__init__(reason or f"retry in {delay:.1f}s")
        self.delay = delay


@dataclass(frozen=True)
class Topology:
    """Names of streams and subjects, optionally under a prefix (one per environment/test)."""

    prefix: str = ""

    def subject(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def _stream(self, name: str) -> str:
        clean = re.sub(r"[^A-Za-z0-9_-]", "_", self.prefix).upper()
        return f"{clean}_{name}" if clean else name

    @property
    def jobs_stream(self) -> str:
        return self._stream("SIGMABATCH_JOBS")

    @property
    def events_stream(self) -> str:
        return self._stream("SIGMABATCH_EVENTS")

    @property
    def provider_limits_bucket(self) -> str:
        """The JetStream key-value bucket of the shared provider rate limits."""
        return self._stream("SIGMABATCH_PROVIDER_LIMITS")

    @property
    def advisories_stream(self) -> str:
        """Where the server's MAX_DELIVERIES advisories about our consumers are kept."""
        return self._stream("SIGMABATCH_ADVISORIES")

    def max_deliveries_subject(self, stream: str, durable: str = "*") -> str:
        return f"{MAX_DELIVERIES_ADVISORY}.{stream}.{durable}"

    def stream_for(self, message_type: type[Message]) -> str:
        return self.jobs_stream if message_type.is_command else self.events_stream


@dataclass(frozen=True)
class ConsumerSpec(Generic[M]):
    """A durable pull consumer of one message type.

    `job_type` names the dead-letter records this consumer writes (visible in the API), and
    `job_key` maps a message to the key its handler runs the job under, so a dead letter
    closes that job's row instead of opening another (default: the Nats-Msg-Id).
    """

    durable: str
    message_type: type[M]
    job_type: str
    job_key: Callable[[Any], str] | None = None
    ack_wait_seconds: float = 30.0
    max_deliver: int = 5
    max_ack_pending: int = 1000
    # Replicas of the consumer's state (0 = as its stream at creation); set to the stream's
    # count so a stream scaled to R3 does not keep R1 consumers (a lost node would stop them).
    replicas: int = 0
    nak_delays: tuple[float, ...] = field(default=(1.0, 5.0, 15.0, 60.0))

    def nak_delay(self, num_delivered: int) -> float:
        return self.nak_delays[min(num_delivered, len(self.nak_delays)) - 1]

    def key_of(self, message: M) -> str:
        return self.job_key(message) if self.job_key is not None else message.message_id()

    def retry_budget_seconds(self, owner_wait_seconds: float = 0.0) -> float:
        """How long a failing message keeps being retried before it is dead-lettered:
        the nak delays between its deliveries, plus each delivery's wait for a live owner."""
        naks = sum(self.nak_delay(n) for n in range(1, self.max_deliver))
        return naks + self.max_deliver * owner_wait_seconds


def server_urls(url: str) -> list[str]:
    """NATS_URL as a list of servers: a cluster is given as comma-separated URLs."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError("NATS_URL holds no server URL")
    return servers


def connect_options(settings: Settings) -> dict[str, Any]:
    """Credentials and TLS of this deployment, as `nats.connect` keyword arguments.

    User/password or a creds file (JWT + nkey) authenticate the service as its own NATS user,
    whose permissions name exactly the subjects it may use (deploy/nats/); a CA file (and
    optionally a client certificate) turns on TLS verified against the deployment's CA.
    """
    options: dict[str, Any] = {"inbox_prefix": settings.nats_inbox_prefix}
    if settings.nats_creds:
        options["user_credentials"] = str(settings.nats_creds)
    elif settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password or ""
    if settings.nats_tls_ca or settings.nats_tls_cert:
        context = ssl.create_default_context(
            cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None
        )
        if settings.nats_tls_cert:
            context.load_cert_chain(
                str(settings.nats_tls_cert),
                str(settings.nats_tls_key) if settings.nats_tls_key else None,
            )
        options["tls"] = context
        if settings.nats_tls_hostname:
            options["tls_hostname"] = settings.nats_tls_hostname
    return options


async def connect(
    url: str, name: str, settings: Settings | None = None, *, reconnect: bool = True
) -> NATS:
    """Connect to one server or a cluster (comma-separated URL), with this deployment's
    credentials and TLS.

    Services reconnect without bound (a NATS restart or a node loss pauses them, never kills
    them; the client moves to another node of the cluster); one-shot commands pass
    `reconnect=False` and fail fast.
    """
    settings = settings or get_settings()

    async def on_disconnect() -> None:
        log.warning("nats disconnected", extra={"service": name})

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"service": name})

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc, extra={"service": name})

    callbacks: dict[str, Any] = (
        {"disconnected_cb": on_disconnect, "reconnected_cb": on_reconnect, "error_cb": on_error}
        if reconnect
        else {}
    )
    return await nats.connect(
        servers=server_urls(url),
        name=name,
        allow_reconnect=reconnect,
        max_reconnect_attempts=-1 if reconnect else 0,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        # A node that stops answering (paused, partitioned) is left for another within
        # ~15 s, not after the client's default 4 minutes.
        ping_interval=5,
        max_outstanding_pings=3,
        **callbacks,
        **connect_options(settings),
    )


async def ensure_streams(
    js: JetStreamContext,
    topology: Topology,
    *,
    duplicate_window_seconds: float = 3600.0,
    event_retention_days: int = 14,
    replicas: int = 1,
) -> None:
    """Create or update both streams (idempotent; every service calls it at start-up)."""
    configs = [
        StreamConfig(
            name=topology.jobs_stream,
            subjects=[topology.subject(m.subject) for m in COMMANDS],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=duplicate_window_seconds,
            num_replicas=replicas,
        ),
        StreamConfig(
            name=topology.events_stream,
            subjects=[topology.subject(m.subject) for m in EVENTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=event_retention_days * 86400.0,
            duplicate_window=duplicate_window_seconds,
            num_replicas=replicas,
        ),
        StreamConfig(
            name=topology.advisories_stream,
            subjects=[
                topology.max_deliveries_subject(topology.jobs_stream),
                topology.max_deliveries_subject(topology.events_stream),
            ],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=event_retention_days * 86400.0,
            num_replicas=replicas,
        ),
    ]
    for config in configs:
        assert config.name is not None
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
                continue
            except BadRequestError:
                pass  # another replica created it a moment ago: update it below
        await js.update_stream(config)


def _consumer_config(topology: Topology, spec: ConsumerSpec[Any]) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=spec.durable,
        filter_subject=topology.subject(spec.message_type.subject),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=spec.ack_wait_seconds,
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
        num_replicas=spec.replicas,
    )


async def ensure_consumer(
    js: JetStreamContext, topology: Topology, spec: ConsumerSpec[Any]
) -> None:
    """Create the durable, or update it in place when its config changed.

    `pull_subscribe(durable=...)` silently keeps an existing consumer's old config, so the
    comparison is explicit. A change is applied as an update (JetStream's create-or-update
    of the same durable), never by deleting and recreating: the consumer keeps its delivered
    and acked positions, so an events consumer does not replay history and no replica
    consuming at that moment loses its subscription. A change JetStream cannot apply in
    place fails loudly rather than silently recreating the consumer.
    """
    stream = topology.stream_for(spec.message_type)
    wanted = _consumer_config(topology, spec)
    try:
        info = await js.consumer_info(stream, spec.durable)
    except NotFoundError:
        info = None
    if info is not None:
        current = info.config
        same = (
            current.filter_subject == wanted.filter_subject
            and current.ack_wait == wanted.ack_wait
            and current.max_deliver == wanted.max_deliver
            and current.max_ack_pending == wanted.max_ack_pending
            and (not spec.replicas or current.num_replicas == wanted.num_replicas)
        )
        if same:
            return
        log.info("consumer %s config changed: updating it in place", spec.durable)
        try:
            await js.add_consumer(stream, wanted)
        except BadRequestError as exc:
            raise RuntimeError(
                f"consumer {spec.durable} on {stream}: JetStream refused to update its config "
                f"in place ({exc}); drain it and remove it by hand (`nats consumer rm "
                f"{stream} {spec.durable}`) if the change is really wanted") from exc
        return
    try:
        await js.add_consumer(stream, wanted)
    except BadRequestError:
        # A replica created it at the same moment: fine if it now exists.
        await js.consumer_info(stream, spec.durable)


# A publish that met one of these may or may not have been stored: a stream leader being
# elected (no responders / 503), a node dying under the request (timeout), the client moving
# to another node. Retrying with the same Nats-Msg-Id is safe: a copy already stored makes
# the retry a dropped duplicate.
RETRYABLE_PUBLISH_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    nats.errors.TimeoutError,
    asyncio.TimeoutError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
)


@dataclass(frozen=True)
class PublishRetry:
    """Bounds of the publish retry: JetStream elects a new stream leader within a few
    seconds of losing one, so the budget covers several elections without hiding an outage."""

    attempt_timeout: float = 5.0
    budget_seconds: float = 30.0
    initial_wait: float = 0.1
    max_wait: float = 2.0
    jitter: float = 0.25  # spreads the retries of many publishers after one election


DEFAULT_PUBLISH_RETRY = PublishRetry()


async def publish(
    js: JetStreamContext,
    topology: Topology,
    message: Message,
    *,
    retry: PublishRetry = DEFAULT_PUBLISH_RETRY,
) -> bool:
    """Publish with `Nats-Msg-Id` = the message's business key, retried through elections.

    Every attempt carries the same id, so a publish whose first attempt was stored but whose
    ack was lost (leader killed mid-request) is not stored twice. Returns False when
    JetStream dropped it as a duplicate of a message published before this call; a duplicate
    met on a retry is this call's own earlier attempt, so that counts as published.
    """
    msg_id = message.message_id()
    headers = {"Nats-Msg-Id": msg_id, "Correlation-Id": message.correlation_id}
    subject = topology.subject(message.subject)
    payload = message.model_dump_json().encode()
    attempts = 0
    ack = None
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(retry.budget_seconds),
        wait=wait_exponential_jitter(
            multiplier=retry.initial_wait, max=retry.max_wait, jitter=retry.jitter
        ),
        retry=retry_if_exception_type(RETRYABLE_PUBLISH_ERRORS),
        before_sleep=lambda state: log.warning(
            "publish of %s not acknowledged (attempt %d): %r; retrying with the same id",
            subject,
            state.attempt_number,
            state.outcome.exception() if state.outcome else None,
            extra={"msg_id": msg_id},
        ),
        reraise=True,
    ):
        with attempt:
            attempts += 1
            ack = await js.publish(
                subject, payload, timeout=retry.attempt_timeout, headers=dict(headers)
            )
    assert ack is not None
    duplicate = bool(ack.duplicate) and attempts == 1
    log.info(
        "published %s%s%s",
        message.subject,
        " (duplicate dropped)" if duplicate else "",
        f" after {attempts} attempts" if attempts > 1 else "",
        extra={"msg_id": msg_id, "correlation_id": message.correlation_id},
    )
    return not duplicate


async def publish_raw(
    js: JetStreamContext, topology: Topology, subject: str, payload: bytes, msg_id: str
) -> bool:
    """Re-publish a recorded message (`jobs retry`) under a new Nats-Msg-Id."""
    ack = await js.publish(topology.subject(subject), payload, headers={"Nats-Msg-Id": msg_id})
    return not bool(ack.duplicate)


@dataclass
class Delivery:
    """What a handler may know of the message in hand.

    A handler that resolves its job key from more than the message (e.g. today's date) sets
    `job_key`, so a dead letter of this delivery closes that job's row.
    """

    msg: Msg
    num_delivered: int
    msg_id: str | None
    job_key: str | None = None

    async def in_progress(self) -> None:
        """Extend AckWait explicitly (the consume loop also heartbeats on its own)."""
        await self.msg.in_progress()


DeadLetterSink = Callable[[ConsumerSpec[Any], str, bytes, str, int], Awaitable[None]]
Handler = Callable[[M, Delivery], Awaitable[None]]
# What a use case publishes with: a process's bus connection (`ServiceContext.publish`) or a
# unit test's recorder; True when the bus stored the message (False: a duplicate it dropped).
Publish = Callable[[Message], Awaitable[bool]]


async def _heartbeat(msg: Msg, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        with contextlib.suppress(Exception):
            await msg.in_progress()


async def process_message(
    msg: Msg,
    spec: ConsumerSpec[M],
    handler: Handler[M],
    dead_letter: DeadLetterSink | None,
) -> str:
    """Run `handler` for one message and settle it: ack, nak(delay) or term + dead letter.

    Returns the outcome ("ack", "nak", "dead"). Cancellation (shutdown) naks the message so
    another replica takes it at once instead of after AckWait.
    """
    deliveries = msg.metadata.num_delivered if msg.metadata else 1
    msg_id = (msg.headers or {}).get("Nats-Msg-Id")
    delivery = Delivery(msg=msg, num_delivered=deliveries, msg_id=msg_id)
    fallback_key = msg_id or f"seq:{msg.metadata.sequence.stream if msg.metadata else '?'}"
    message_key: str | None = None

    async def to_dead_letter(error: str) -> str:
        key = delivery.job_key or message_key or fallback_key
        log.error(
            "dead-lettering %s after %d deliveries: %s",
            spec.message_type.subject,
            deliveries,
            error,
            extra={"msg_id": fallback_key, "job_key": key},
        )
        if dead_letter is not None:
            try:
                await dead_letter(spec, key, msg.data, error, deliveries)
            except Exception:
                # Keep the message: it comes back after AckWait and is dead-lettered then.
                log.exception("could not record dead letter for %s", key)
                return "nak"
        await msg.term()
        return "dead"

    try:
        message = spec.message_type.model_validate_json(msg.data)
    except ValidationError as exc:
        return await to_dead_letter(f"invalid {spec.message_type.__name__} payload: {exc}")
    with contextlib.suppress(Exception):
        message_key = spec.key_of(message)

    heartbeat = asyncio.create_task(_heartbeat(msg, max(spec.ack_wait_seconds / 3, 0.2)))
    try:
        await handler(message, delivery)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await msg.nak()
        raise
    except PermanentError as exc:
        return await to_dead_letter(f"{type(exc).__name__}: {exc}")
    except RetryAfter as exc:
        if deliveries >= spec.max_deliver:
            return await to_dead_letter(f"{type(exc).__name__}: {exc}")
        log.info("handler deferred (delivery %d/%d), retry in %.1fs: %s", deliveries,
                 spec.max_deliver, exc.delay, exc, extra={"msg_id": fallback_key})
        await msg.nak(delay=max(exc.delay, 0.1))
        return "delayed"
    except Exception as exc:
        if deliveries >= spec.max_deliver:
            return await to_dead_letter(f"{type(exc).__name__}: {exc}")
        delay = spec.nak_delay(deliveries)
        log.warning(
            "handler failed (delivery %d/%d), retry in %.1fs: %s: %s",
            deliveries,
            spec.max_deliver,
            delay,
            type(exc).__name__,
            exc,
            extra={"msg_id": fallback_key, "correlation_id": message.correlation_id},
        )
        await msg.nak(delay=delay)
        return "nak"
    finally:
        heartbeat.cancel()
    await msg.ack()
    return "ack"


async def consume(
    js: JetStreamContext,
    topology: Topology,
    spec: ConsumerSpec[M],
    handler: Handler[M],
    stop: asyncio.Event,
    *,
    dead_letter: DeadLetterSink | None = None,
    batch: int = 1,
    fetch_timeout: float = 1.0,
) -> None:
    """Pull, handle and settle messages until `stop` is set.

    The messages of one pull (up to `batch`) are handled together, concurrently, and each is
    settled on its own: a handler that serves many jobs with one piece of work (onboarding
    coalesces its vendor calls, portfolio_refresh gathers first snapshots) sees them at once.
    The messages in hand are finished before the loop returns (graceful SIGTERM).
    """
    await ensure_consumer(js, topology, spec)
    stream = topology.stream_for(spec.message_type)
    subscription = await js.pull_subscribe_bind(durable=spec.durable, stream=stream)
    try:
        while not stop.is_set():
            try:
                messages = await subscription.fetch(batch, timeout=fetch_timeout)
            except (nats.errors.TimeoutError, TimeoutError):  # a batch pull times out as asyncio's
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.NoServersError):
                await asyncio.sleep(0.5)
                continue
            except Exception as exc:  # reconnecting, consumer being recreated, ...
                log.warning("fetch from %s failed: %r", spec.durable, exc)
                await asyncio.sleep(0.5)
                continue
            if len(messages) == 1:
                await process_message(messages[0], spec, handler, dead_letter)
            else:
                await asyncio.gather(
                    *(process_message(msg, spec, handler, dead_letter) for msg in messages))
    finally:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()


def cluster_summary(cluster: ClusterInfo | None) -> dict[str, Any]:
    """A stream's or consumer's leader and each replica's state (lag in operations behind
    the leader), for status displays; empty outside a cluster."""
    if cluster is None or not cluster.leader:
        return {"leader": None, "peers": []} if cluster is not None else {}
    peers = [{"name": cluster.leader, "role": "leader", "current": True, "lag": 0}]
    for peer in cluster.replicas or []:
        peers.append(
            {
                "name": peer.name,
                "role": "replica",
                "current": bool(peer.current),
                "lag": peer.lag or 0,
                "active": f"{(peer.active or 0) / 1e9:.1f}s ago",
                "offline": bool(peer.offline),
            }
        )
    return {"leader": cluster.leader, "peers": peers}


async def _bind_advisories(
    js: JetStreamContext, topology: Topology, durable: str, config: ConsumerConfig
) -> Any:
    """Create the advisory consumer (or replace it when its filter changed) and bind to it.

    A replacement starts from new advisories only: replaying old ones would record again
    the events-stream messages they name.
    """
    stream = topology.advisories_stream
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        info = None
    if info is not None and info.config.filter_subject != config.filter_subject:
        await js.delete_consumer(stream, durable)
        config = dataclasses.replace(config, deliver_policy=DeliverPolicy.NEW)
        info = None
    if info is None:
        try:
            await js.add_consumer(stream, config)
        except BadRequestError:
            await js.consumer_info(stream, durable)  # a replica created it meanwhile
    return await js.pull_subscribe_bind(durable=durable, stream=stream)


async def settle_max_delivery(
    js: JetStreamContext,
    topology: Topology,
    spec: ConsumerSpec[Any],
    dead_letter: DeadLetterSink,
    advisory: dict[str, Any],
) -> str:
    """Record, as a failed job, a message the server stopped delivering (MaxDeliver reached)
    that no handler settled, then delete it from the work queue (it would sit there unseen).

    Returns what happened: "recorded", "gone" (the message was settled meanwhile) or
    "unknown" (not about `spec`). A message of the events stream is only recorded: other
    consumers may still need it, and its retention removes it.
    """
    stream, durable = advisory.get("stream"), advisory.get("consumer")
    seq = int(advisory.get("stream_seq") or 0)
    if durable != spec.durable or stream != topology.stream_for(spec.message_type) or seq <= 0:
        return "unknown"
    try:
        raw = await js.get_msg(stream, seq)
    except NotFoundError:
        return "gone"
    deliveries = int(advisory.get("deliveries") or spec.max_deliver)
    msg_id = (raw.headers or {}).get("Nats-Msg-Id") or f"seq:{seq}"
    payload = raw.data or b""
    try:
        key = spec.key_of(spec.message_type.model_validate_json(payload))
    except Exception:
        key = msg_id
    error = (
        f"{spec.message_type.subject} (seq {seq}) reached MaxDeliver ({deliveries} deliveries) "
        "without any handler settling it; recorded from the MAX_DELIVERIES advisory"
    )
    log.error("%s", error, extra={"msg_id": msg_id, "job_key": key})
    await dead_letter(spec, key, payload, error, deliveries)
    if stream == topology.jobs_stream:
        with contextlib.suppress(NotFoundError):
            await js.delete_msg(stream, seq)
    return "recorded"


async def consume_max_deliveries(
    js: JetStreamContext,
    topology: Topology,
    spec: ConsumerSpec[Any],
    dead_letter: DeadLetterSink,
    stop: asyncio.Event,
    *,
    retry_delay: float = 5.0,
) -> None:
    """The consumer of the MAX_DELIVERIES advisories of one durable (shared by replicas).

    An advisory whose record cannot be written yet (PostgreSQL down) is retried every
    `retry_delay` seconds until it is (the advisory consumer has no MaxDeliver).
    """
    stream = topology.stream_for(spec.message_type)
    durable = f"{spec.durable}-max-deliveries"
    config = ConsumerConfig(
        durable_name=durable,
        filter_subject=topology.max_deliveries_subject(stream, spec.durable),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=30.0,
        max_deliver=-1,
    )
    subscription = None
    while subscription is None and not stop.is_set():
        try:
            subscription = await _bind_advisories(js, topology, durable, config)
        except Exception as exc:  # NATS restarting: never take the service down for this
            log.warning("MAX_DELIVERIES consumer %s not ready: %s", durable, exc)
            await asyncio.sleep(retry_delay)
    if subscription is None:
        return
    try:
        while not stop.is_set():
            try:
                messages = await subscription.fetch(1, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            except Exception as exc:
                log.debug("advisory fetch failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            for msg in messages:
                try:
                    advisory = json.loads(msg.data)
                    outcome = await settle_max_delivery(js, topology, spec, dead_letter, advisory)
                except Exception as exc:
                    log.warning("MAX_DELIVERIES advisory not recorded yet: %s", exc)
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=retry_delay)
                    continue
                log.info("MAX_DELIVERIES advisory of %s: %s", spec.durable, outcome)
                await msg.ack()
    finally:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()


async def consumer_lag(js: JetStreamContext, topology: Topology) -> list[dict[str, Any]]:
    """Per durable consumer: pending (not yet delivered) and ack-pending counts, and in a
    cluster its leader and replicas."""
    rows: list[dict[str, Any]] = []
    for stream in (topology.jobs_stream, topology.events_stream):
        try:
            consumers = await js.consumers_info(stream)
        except NotFoundError:
            continue
        for info in consumers:
            rows.append(
                {
                    "stream": stream,
                    "consumer": info.name,
                    "pending": info.num_pending,
                    "ack_pending": info.num_ack_pending,
                    "redelivered": info.num_redelivered,
                    **cluster_summary(info.cluster),
                }
            )
    return rows
