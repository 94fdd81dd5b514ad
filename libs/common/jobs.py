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
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

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
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Job:
    id: uuid.UUID
    job_type: str
    job_key: str
    attempts: int
    reclaimed: bool


class JobTracker:
    """Start, heartbeat, report progress of and finish jobs."""

    def __init__(
        self,
        database_url: str,
        *,
        worker_id: str | None = None,
        stale_after_seconds: float = 120.0,
    ) -> None:
        self.database_url = database_url
        self.worker_id = worker_id or default_worker_id()
        self.stale_after_seconds = stale_after_seconds

    async def start(
        self,
        job_type: str,
        job_key: str,
        *,
        correlation_id: str | None = None,
        phases: Sequence[str] = (),
    ) -> Job:
        """Claim the job or raise JobAlreadyRunning; reclaims a stale running row."""
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
                return Job(row.id, job_type, job_key, row.attempts, reclaimed=False)
            row = (
                await session.execute(
                    text(
                        """
                        UPDATE batch_run_history
                        SET worker_id = :worker_id, heartbeat_at = now(),
                            attempts = attempts + 1, error = NULL,
                            correlation_id = COALESCE(:correlation_id, correlation_id)
                        WHERE job_type = :job_type AND job_key = :job_key AND status = 'running'
                          AND heartbeat_at < now() - make_interval(secs => :stale)
                        RETURNING id, attempts
                        """
                    ),
                    {
                        "worker_id": self.worker_id,
                        "job_type": job_type,
                        "job_key": job_key,
                        "correlation_id": correlation_id,
                        "stale": self.stale_after_seconds,
                    },
                )
            ).first()
        if row is None:
            raise JobAlreadyRunning(f"{job_type} {job_key} is already running")
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
            if not isinstance(exc, JobLeaseLost | asyncio.CancelledError):
                with contextlib.suppress(Exception):
                    await self.finish(job, FAILED, error=f"{type(exc).__name__}: {exc}")
            raise
        else:
            beater.cancel()
            with contextlib.suppress(JobLeaseLost):  # already finished by the body
                await self.finish(job, COMPLETED)

    async def record_dead_letter(
        self, job_type: str, job_key: str, error: str, payload: bytes, deliveries: int
    ) -> None:
        """A message that exhausted its deliveries: its job is marked failed, with the error."""
        result = json.dumps(
            {
                "dead_letter": True,
                "deliveries": deliveries,
                "payload": payload.decode("utf-8", "replace"),
            }
        )
        async with session_scope(self.database_url) as session:
            updated = await session.execute(
                text(
                    """
                    UPDATE batch_run_history
                    SET status = 'failed', finished_at = now(), error = CAST(:error AS text),
                        result = result || CAST(:result AS jsonb)
                    WHERE job_type = :job_type AND job_key = :job_key AND status = 'running'
                    """
                ),
                {"job_type": job_type, "job_key": job_key, "error": error, "result": result},
            )
            if updated.rowcount == 0:  # type: ignore[attr-defined]
                await session.execute(
                    text(
                        """
                        INSERT INTO batch_run_history
                            (id, job_type, job_key, status, worker_id, finished_at, error,
                             attempts, result)
                        VALUES (:id, :job_type, :job_key, 'failed', :worker_id, now(), CAST(:error AS text),
                                :attempts, CAST(:result AS jsonb))
                        """
                    ),
                    {
                        "id": uuid.uuid4(),
                        "job_type": job_type,
                        "job_key": job_key,
                        "worker_id": self.worker_id,
                        "error": error,
                        "attempts": deliveries,
                        "result": result,
                    },
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
