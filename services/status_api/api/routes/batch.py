"""Jobs of every type (batch runs, symbol onboarding, refreshes) from the job tracker.

Tenancy (docs/design.md §9): a user sees the jobs of their own portfolios and uploads, with
internals (worker and message ids, raw errors, payloads) redacted; admins see every job
whole. The rule lives in `queries.VISIBLE_TO_USER` / `queries.redact_job`.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import HTTPException, Query

from services.status_api import queries
from services.status_api.api.deps import CallerDep, SessionDep
from services.status_api.api.responses import resource_router
from services.status_api.schemas import ErrorResponse, JobOut

router = resource_router("/batch", "batch")

JobType = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
                                      description="e.g. symbol_batch, symbol_onboard")]


@router.get("/jobs", response_model=list[JobOut],
            summary="Jobs of every type (default: the running ones)")
async def batch_jobs(
    session: SessionDep, caller: CallerDep,
    status: Literal["running", "completed", "partial", "failed"] = "running",
    job_type: JobType = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    return await queries.jobs(session, status, job_type, limit, caller)


@router.get("/jobs/{job_id}", response_model=JobOut,
            responses={404: {"model": ErrorResponse,
                             "description": "No such job for this caller (another user's job "
                                            "answers 404 too)."}},
            summary="One job (its phases, progress, result)")
async def batch_job(session: SessionDep, caller: CallerDep, job_id: uuid.UUID) -> dict[str, Any]:
    found = await queries.job(session, job_id, caller)
    if found is None:
        raise HTTPException(404, detail="Job not found.")
    return found


@router.get("/runs", response_model=list[JobOut], summary="Job history, newest first")
async def batch_runs(
    session: SessionDep, caller: CallerDep,
    job_type: JobType = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[dict[str, Any]]:
    return await queries.jobs(session, None, job_type or None, limit, caller)
