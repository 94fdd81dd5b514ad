"""Jobs of every type (batch runs, symbol onboarding, refreshes) from the job tracker."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Query

from services.status_api import queries
from services.status_api.api.deps import CallerDep, SessionDep
from services.status_api.api.responses import resource_router
from services.status_api.schemas import JobOut

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
    return await queries.jobs(session, status, job_type, limit)


@router.get("/runs", response_model=list[JobOut], summary="Job history, newest first")
async def batch_runs(
    session: SessionDep, caller: CallerDep,
    job_type: JobType = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[dict[str, Any]]:
    return await queries.jobs(session, None, job_type or None, limit)
