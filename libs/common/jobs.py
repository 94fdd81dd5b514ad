"""The job tracker: every job of every type as a row of batch_run_history.

The database, not process memory, decides who runs a job: a partial unique index admits one
`running` row per (job_type, job_key), so two replicas or two restarts cannot run the same
job at once. A running row whose heartbeat is older than the stale limit belongs to a dead
worker and may be reclaimed; each write checks the worker still owns the row (a fencing
check), so a worker that lost its lease stops instead of writing over its successor.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.db import session_scope
from libs.common.domain.statuses import FINAL_JOB_STATUSES as FINAL_STATUSES
from libs.common.domain.statuses import JobStatus

log = logging.getLogger(__name__)

RUNNING, COMPLETED, PARTIAL, FAILED = (
    JobStatus.RUNNING, JobStatus.COMPLETED, JobStatus.PARTIAL, JobStatus.FAILED,
)


class JobAlreadyRunning(Exception):
    """Another live worker holds this (job_type, job_key)."""


class JobLeaseLost(Exception):
    """This worker's running row was reclaimed by another (it was presumed dead)."""


def default_worker_id() -> str:
    """host:pid:random — unique per process, even when a pid is reused after a crash."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


# Advisory-lock namespace of worker leases: lock (LEASE_NAMESPACE, hashtext(worker_id)).
LEASE_NAMESPACE = 0x5B1E

# SQL: the owner of a running row is alive while its session holds its lease lock.
OWNER_ALIVE = f"""
    EXISTS (SELECT 1 FROM pg_locks l
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND l.classid = {LEASE_NAMESPACE}::oid
              AND l.objid = hashtext(batch_run_history.worker_id)::oid)
"""
# A running row may be taken over when its owner released it, its session (and so its
# lease) is gone, or, whatever the lease says, it stopped heartbeating long ago.
RECLAIMABLE = f"""
    (worker_id IS NULL OR NOT {OWNER_ALIVE}
     OR heartbeat_at < now() - make_interval(secs => :stale))
"""


class WorkerLease:
    """This process's liveness in PostgreSQL: a session advisory lock on a dedicated connection.

    The server drops the lock the moment the session ends, so when a worker is killed (kill -9,
    OOM, a lost host whose TCP connection is reset) its running jobs become reclaimable at
    once, instead of after the stale-heartbeat limit. One lease per (database, worker id) per
    process, shared by every JobTracker of the process.
    """

    _leases: dict[tuple[str, str], WorkerLease] = {}

    def __init__(self, database_url: str, worker_id: str) -> None:
        self.database_url = database_url
        self.worker_id = worker_id
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._keeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Running rows of this worker that a handler of this process is working on. A row of
        # this worker that is not in hand was left by a handler that ended without settling
        # it (PostgreSQL was down when it tried): the lease says "alive", yet nobody works on
        # it, so a redelivery to this same process takes it over at once.
        self.in_hand: set[uuid.UUID] = set()

    @classmethod
    def of(cls, database_url: str, worker_id: str) -> WorkerLease:
        key = (database_url, worker_id)
        if key not in cls._leases:
            cls._leases[key] = cls(database_url, worker_id)
        return cls._leases[key]

    async def ensure(self) -> None:
        """Hold the lease (reconnect and re-lock after a lost connection)."""
        import asyncpg

        from libs.common.db import asyncpg_dsn

        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests, CLI): start afresh
            self._loop, self._conn, self._keeper = loop, None, None
            self._lock = asyncio.Lock()
            self.in_hand = set()  # the old loop's handlers are gone
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return
            conn = await asyncpg.connect(asyncpg_dsn(self.database_url), timeout=10)
            try:
                await conn.execute(
                    "SELECT pg_advisory_lock($1::int, hashtext($2))",
                    LEASE_NAMESPACE,
                    self.worker_id,
                )
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
            if self._keeper is None or self._keeper.done():
                self._keeper = asyncio.create_task(self._keep())

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            try:
                if self._conn is None or self._conn.is_closed():
                    await self.ensure()
                else:
                    await asyncio.wait_for(self._conn.fetchval("SELECT 1"), timeout=5)
            except Exception as exc:
                log.warning("worker lease of %s lost: %s", self.worker_id, exc)
                with contextlib.suppress(Exception):
                    if self._conn is not None:
                        self._conn.terminate()
                self._conn = None

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        self._conn = None
        self._leases.pop((self.database_url, self.worker_id), None)


@dataclass(frozen=True)
class Job:
    id: uuid.UUID
    job_type: str
    job_key: str
    attempts: int
    reclaimed: bool


class JobRunner(Protocol):
    """What a use case needs of the job tracker (`JobTracker` is the PostgreSQL one; unit
    tests pass an in-memory fake with the same rules: `run` finishes the job failed when its
    body raises, completed when the body returns without finishing it)."""

    def run(self, job_type: str, job_key: str, *, correlation_id: str | None = None,
            phases: Sequence[str] = (), heartbeat_seconds: float = 10.0,
            ) -> AbstractAsyncContextManager[Job]: ...

    async def phase(self, job: Job, name: str, *, total: int = 0, unit: str | None = None,
                    current: int = 0) -> None: ...

    async def progress(self, job: Job, current: int, total: int | None = None) -> None: ...

    async def finish(self, job: Job, status: str = COMPLETED, *,
                     result: dict[str, Any] | None = None, error: str | None = None) -> None: ...


class JobTracker:
    """Start, heartbeat, report progress of and finish jobs."""

    def __init__(
        self,
        database_url: str,
        *,
        worker_id: str | None = None,
        stale_after_seconds: float = 120.0,
        owner_wait_seconds: float = 0.0,
    ) -> None:
        self.database_url = database_url
        self.worker_id = worker_id or default_worker_id()
        self.stale_after_seconds = stale_after_seconds
        # How long `start` waits for a live owner to finish before giving up: a redelivery
        # that meets a live owner waits (the bus heartbeats the message meanwhile) instead of
        # spending its deliveries on naks.
        self.owner_wait_seconds = owner_wait_seconds
        self.lease = WorkerLease.of(database_url, self.worker_id)

    async def start(
        self,
        job_type: str,
        job_key: str,
        *,
        correlation_id: str | None = None,
        phases: Sequence[str] = (),
    ) -> Job:
        """Claim the job, waiting up to `owner_wait_seconds` for a live owner to finish.

        Raises JobAlreadyRunning when a live owner still holds it after the wait.
        """
        deadline = time.monotonic() + self.owner_wait_seconds
        while True:
            try:
                return await self._start_once(
                    job_type, job_key, correlation_id=correlation_id, phases=phases
                )
            except JobAlreadyRunning:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    async def _start_once(
        self,
        job_type: str,
        job_key: str,
        *,
        correlation_id: str | None = None,
        phases: Sequence[str] = (),
    ) -> Job:
        """Insert the running row, or take over one whose owner is dead (or long silent)."""
        await self.lease.ensure()
        phase_list = json.dumps(
            [{"name": name, "status": "pending", "current": 0, "total": 0} for name in phases]
        )
        async with session_scope(self.database_url) as session:
            row = (
                await session.execute(
                    text(
                        """
                        INSERT INTO batch_run_history
                            (id, job_type, job_key, status, correlation_id, worker_id, phases)
                        VALUES (:id, :job_type, :job_key, 'running', :correlation_id, :worker_id,
                                CAST(:phases AS jsonb))
                        ON CONFLICT (job_type, job_key) WHERE status = 'running' DO NOTHING
                        RETURNING id, attempts
                        """
                    ),
                    {
                        "id": uuid.uuid4(),
                        "job_type": job_type,
                        "job_key": job_key,
                        "correlation_id": correlation_id,
                        "worker_id": self.worker_id,
                        "phases": phase_list,
                    },
                )
            ).first()
            if row is not None:
                self.lease.in_hand.add(row.id)
                return Job(row.id, job_type, job_key, row.attempts, reclaimed=False)
            row = (
                await session.execute(
                    text(
                        f"""
                        UPDATE batch_run_history
                        SET worker_id = :worker_id, heartbeat_at = now(),
                            attempts = attempts + 1, error = NULL,
                            correlation_id = COALESCE(:correlation_id, correlation_id)
                        WHERE job_type = :job_type AND job_key = :job_key AND status = 'running'
                          AND ({RECLAIMABLE}
                               OR (worker_id = :worker_id
                                   AND NOT id = ANY(CAST(:in_hand AS uuid[]))))
                        RETURNING id, attempts
                        """
                    ),
                    {
                        "worker_id": self.worker_id,
                        "job_type": job_type,
                        "job_key": job_key,
                        "correlation_id": correlation_id,
                        "stale": self.stale_after_seconds,
                        "in_hand": list(self.lease.in_hand),
                    },
                )
            ).first()
        if row is None:
            raise JobAlreadyRunning(f"{job_type} {job_key} is already running")
        self.lease.in_hand.add(row.id)
        log.warning("reclaimed stale job %s %s (attempt %d)", job_type, job_key, row.attempts)
        return Job(row.id, job_type, job_key, row.attempts, reclaimed=True)

    async def _update(
        self, job: Job, assignments: str, params: dict[str, Any], session: AsyncSession | None
    ) -> None:
        statement = text(
            f"UPDATE batch_run_history SET {assignments}, heartbeat_at = now() "
            "WHERE id = :id AND worker_id = :worker_id AND status = 'running'"
        )
        values = {"id": job.id, "worker_id": self.worker_id, **params}
        if session is not None:
            result = await session.execute(statement, values)
        else:
            async with session_scope(self.database_url) as own:
                result = await own.execute(statement, values)
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise JobLeaseLost(f"{job.job_type} {job.job_key}: no longer owned by {self.worker_id}")

    async def heartbeat(self, job: Job) -> None:
        await self._update(job, "attempts = attempts", {}, None)

    async def phase(
        self, job: Job, name: str, *, total: int = 0, unit: str | None = None, current: int = 0
    ) -> None:
        """Enter phase `name`: earlier running phases are marked completed."""
        now = dt.datetime.now(dt.UTC).isoformat()
        await self._update(
            job,
            """
            current_phase = CAST(:name AS text), progress_current = CAST(:current AS integer), progress_total = CAST(:total AS integer),
            progress_unit = CAST(:unit AS text),
            phases = (
                SELECT COALESCE(jsonb_agg(
                    CASE
                        WHEN p->>'name' = CAST(:name AS text) THEN p || jsonb_build_object(
                            'status', 'running', 'current', CAST(:current AS integer),
                            'total', CAST(:total AS integer), 'unit', CAST(:unit AS text),
                            'started_at', CAST(:now AS text))
                        WHEN p->>'status' = 'running' THEN p || jsonb_build_object(
                            'status', 'completed', 'finished_at', CAST(:now AS text),
                            'current', p->'total')
                        ELSE p
                    END ORDER BY ord), '[]'::jsonb)
                  || CASE WHEN NOT EXISTS (
                        SELECT 1 FROM jsonb_array_elements(phases) q WHERE q->>'name' = CAST(:name AS text))
                     THEN jsonb_build_array(jsonb_build_object(
                        'name', CAST(:name AS text), 'status', 'running',
                        'current', CAST(:current AS integer), 'total', CAST(:total AS integer),
                        'unit', CAST(:unit AS text), 'started_at', CAST(:now AS text)))
                     ELSE '[]'::jsonb END
                FROM jsonb_array_elements(phases) WITH ORDINALITY AS t(p, ord)
            )
            """,
            {"name": name, "current": current, "total": total, "unit": unit, "now": now},
            None,
        )

    async def progress(self, job: Job, current: int, total: int | None = None) -> None:
        """Progress inside the current phase (also a heartbeat)."""
        await self._update(
            job,
            """
            progress_current = CAST(:current AS integer),
            progress_total = COALESCE(CAST(:total AS integer), progress_total),
            phases = (
                SELECT COALESCE(jsonb_agg(
                    CASE WHEN p->>'name' = current_phase THEN p || jsonb_build_object(
                        'current', CAST(:current AS integer),
                        'total', COALESCE(CAST(:total AS integer), progress_total))
                    ELSE p END ORDER BY ord), '[]'::jsonb)
                FROM jsonb_array_elements(phases) WITH ORDINALITY AS t(p, ord)
            )
            """,
            {"current": current, "total": total},
            None,
        )

    async def finish(
        self,
        job: Job,
        status: str = COMPLETED,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        session: AsyncSession | None = None,
    ) -> None:
        """Close the job; pass `session` to commit it atomically with the job's own writes."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"not a final status: {status}")
        now = dt.datetime.now(dt.UTC).isoformat()
        await self._update(
            job,
            """
            status = CAST(:status AS text), finished_at = now(), error = CAST(:error AS text),
            result = result || CAST(:result AS jsonb),
            progress_current = CASE WHEN CAST(:status AS text) = 'failed' THEN progress_current
                                    ELSE progress_total END,
            phases = (
                SELECT COALESCE(jsonb_agg(
                    CASE WHEN p->>'status' = 'running' THEN p || jsonb_build_object(
                        'status', CASE WHEN CAST(:status AS text) = 'failed' THEN 'failed'
                                       ELSE 'completed' END,
                        'finished_at', CAST(:now AS text))
                    ELSE p END ORDER BY ord), '[]'::jsonb)
                FROM jsonb_array_elements(phases) WITH ORDINALITY AS t(p, ord)
            )
            """,
            {
                "status": status,
                "error": error,
                "result": json.dumps(result or {}, default=str),
                "now": now,
            },
            session,
        )

    @contextlib.asynccontextmanager
    async def run(
        self,
        job_type: str,
        job_key: str,
        *,
        correlation_id: str | None = None,
        phases: Sequence[str] = (),
        heartbeat_seconds: float = 10.0,
    ) -> AsyncIterator[Job]:
        """Start a job, heartbeat it while the body runs, mark it failed if the body raises.

        The body calls `finish` itself (often inside its own transaction); a body that returns
        without finishing gets `completed`.
        """
        job = await self.start(job_type, job_key, correlation_id=correlation_id, phases=phases)

        async def beat() -> None:
            while True:
                await asyncio.sleep(heartbeat_seconds)
                try:
                    await self.heartbeat(job)
                except JobLeaseLost:
                    return
                except Exception as exc:  # DB blip: the next beat retries
                    log.warning("heartbeat of %s %s failed: %s", job_type, job_key, exc)

        beater = asyncio.create_task(beat())
        try:
            yield job
        except BaseException as exc:
            beater.cancel()
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
                # Shutdown past the grace: hand the row back so the redelivery resumes now.
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(self.release(job), timeout=5)
            elif not isinstance(exc, JobLeaseLost):
                with contextlib.suppress(Exception):
                    await self.finish(job, FAILED, error=f"{type(exc).__name__}: {exc}")
            raise
        else:
            beater.cancel()
            with contextlib.suppress(JobLeaseLost):  # already finished by the body
                await self.finish(job, COMPLETED)
        finally:
            self.abandon(job)

    def abandon(self, job: Job) -> None:
        """This process stops working on `job`, settled or not: if its row is still running
        (settling it failed), a redelivery here takes it over at once."""
        self.lease.in_hand.discard(job.id)

    async def release(self, job: Job) -> None:
        """Give a running row up (shutdown): it stays `running`, ownerless, reclaimable now."""
        async with session_scope(self.database_url) as session:
            await session.execute(
                text(
                    "UPDATE batch_run_history SET worker_id = NULL, heartbeat_at = now() "
                    "WHERE id = :id AND worker_id = :worker_id AND status = 'running'"
                ),
                {"id": job.id, "worker_id": self.worker_id},
            )
        log.info("released %s %s", job.job_type, job.job_key)

    async def record_dead_letter(
        self,
        job_type: str,
        job_key: str,
        error: str,
        payload: bytes,
        deliveries: int,
        *,
        subject: str | None = None,
    ) -> None:
        """A message that exhausted its deliveries: its job is marked failed, with the error."""
        await record_failed_job(
            self.database_url, job_type, job_key, error,
            subject=subject, payload=payload, deliveries=deliveries, worker_id=self.worker_id,
            extra={"dead_letter": True},
        )

    async def latest(self, job_type: str, job_key: str) -> dict[str, Any] | None:
        async with session_scope(self.database_url) as session:
            row = (
                (
                    await session.execute(
                        text(
                            "SELECT * FROM batch_run_history WHERE job_type = :t AND job_key = :k "
                            "ORDER BY started_at DESC LIMIT 1"
                        ),
                        {"t": job_type, "k": job_key},
                    )
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None


async def record_failed_job(
    database_url: str,
    job_type: str,
    job_key: str,
    error: str,
    *,
    subject: str | None,
    payload: bytes | None,
    deliveries: int | None = None,
    worker_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Close the job (type, key) as `failed` with `error`, keeping the message that re-drives it.

    The running row is closed when its owner is gone or is the caller (`worker_id`); another
    live owner finishes its own row (the failure is then that of a duplicate delivery and is
    only logged). With no running row a
    failed row is inserted. `subject` (without the bus prefix) and `payload` are what
    `retry_job` re-publishes.
    """
    result = json.dumps(
        {
            **(extra or {}),
            **({"deliveries": deliveries} if deliveries is not None else {}),
            **({"subject": subject} if subject else {}),
            **({"payload": payload.decode("utf-8", "replace")} if payload is not None else {}),
        }
    )
    params = {
        "job_type": job_type,
        "job_key": job_key,
        "error": error,
        "result": result,
        "me": worker_id,
    }
    async with session_scope(database_url) as session:
        running = (
            await session.execute(
                text(
                    f"""
                    SELECT id, {OWNER_ALIVE} AND worker_id IS NOT NULL
                               AND worker_id IS DISTINCT FROM :me AS alive
                    FROM batch_run_history
                    WHERE job_type = :job_type AND job_key = :job_key AND status = 'running'
                    FOR UPDATE
                    """
                ),
                params,
            )
        ).first()
        if running is not None and running.alive and running.id is not None:
            log.warning("%s %s failed in a duplicate delivery while its owner runs it: %s",
                        job_type, job_key, error)
            return
        if running is not None:
            await session.execute(
                text(
                    """
                    UPDATE batch_run_history
                    SET status = 'failed', finished_at = now(), error = CAST(:error AS text),
                        result = result || CAST(:result AS jsonb)
                    WHERE id = :id
                    """
                ),
                {**params, "id": running.id},
            )
            return
        await session.execute(
            text(
                """
                INSERT INTO batch_run_history
                    (id, job_type, job_key, status, worker_id, finished_at, error, attempts,
                     result)
                VALUES (:id, :job_type, :job_key, 'failed', :worker_id, now(),
                        CAST(:error AS text), :attempts, CAST(:result AS jsonb))
                """
            ),
            {
                **params,
                "id": uuid.uuid4(),
                "worker_id": worker_id,
                "attempts": deliveries or 1,
            },
        )


class NotRetryable(Exception):
    """The job is not failed, or no message that would re-drive it was recorded."""


async def retry_message(database_url: str, job_id: uuid.UUID) -> tuple[str, bytes, str]:
    """(subject without prefix, payload, Nats-Msg-Id) that re-drive the failed job `job_id`.

    The message is the one recorded with the failure (dead letter, MaxDeliver advisory, an
    isolated portfolio), or failing that the one recorded with another failure of the same
    (type, key). The Nats-Msg-Id is new per retried row (`retry:<id>`): JetStream drops a
    second retry of the same row inside its window, and the job's handler runs as usual.
    """
    async with session_scope(database_url) as session:
        row = (
            await session.execute(
                text(
                    "SELECT id, job_type, job_key, status, result FROM batch_run_history "
                    "WHERE id = :id"
                ),
                {"id": job_id},
            )
        ).first()
        if row is None:
            raise NotRetryable(f"no job {job_id}")
        if row.status != FAILED:
            raise NotRetryable(f"job {job_id} is {row.status}, not failed")
        source = row.result if row.result.get("payload") else None
        if source is None:
            other = (
                await session.execute(
                    text(
                        "SELECT result FROM batch_run_history WHERE job_type = :t AND "
                        "job_key = :k AND result ? 'payload' ORDER BY started_at DESC LIMIT 1"
                    ),
                    {"t": row.job_type, "k": row.job_key},
                )
            ).first()
            source = other.result if other is not None else None
        if source is None or not source.get("subject"):
            raise NotRetryable(
                f"job {job_id} ({row.job_type} {row.job_key}) has no recorded message to re-drive"
            )
        await session.execute(
            text(
                "UPDATE batch_run_history SET result = result || jsonb_build_object("
                "'retried_at', CAST(now() AS text)) WHERE id = :id"
            ),
            {"id": job_id},
        )
    return source["subject"], source["payload"].encode(), f"retry:{job_id}"


async def redrive_job(database_url: str, js: Any, topology: Any, job_id: uuid.UUID) -> str:
    """Re-publish the message of failed job `job_id` (CLI `jobs retry`, the admin endpoint).

    Returns the Nats-Msg-Id used; raises NotRetryable when there is nothing to re-drive.
    """
    from libs.common import bus

    subject, payload, msg_id = await retry_message(database_url, job_id)
    await bus.publish_raw(js, topology, subject, payload, msg_id)
    log.info("re-drove job %s on %s (%s)", job_id, subject, msg_id)
    return msg_id
