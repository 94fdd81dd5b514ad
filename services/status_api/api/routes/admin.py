"""Admin actions and reads: the nightly trigger; the symbol batch per date (its run's
phases with durations, per-symbol failures with reasons, the date's refresh) and the bus
(stream sizes, consumer lag) for the console's Operations page."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from typing import Annotated, Any

from fastapi import HTTPException, Query
from nats.js.errors import NotFoundError

from libs.common import bus
from libs.common.events import BatchNightlyRequested
from libs.common.jobs import NotRetryable, redrive_job
from services.status_api import queries
from services.status_api.api.deps import AdminDep, SessionDep, StateDep
from services.status_api.api.responses import ADMIN_ONLY, resource_router
from services.status_api.schemas import (
    BatchDateOut,
    BusStatus,
    ErrorResponse,
    JobRetried,
    NightlyAccepted,
    NightlyRequest,
)

router = resource_router("/admin", "admin")


@router.post("/batch/nightly", status_code=202, response_model=NightlyAccepted,
             responses={**ADMIN_ONLY,
                        503: {"model": ErrorResponse, "description": "NATS unavailable."}},
             summary="Trigger the nightly batch (admin)")
async def trigger_nightly(state: StateDep, caller: AdminDep,
                          body: NightlyRequest | None = None) -> NightlyAccepted:
    rerun = bool(body and body.rerun)
    message = BatchNightlyRequested(target_date=body.target_date if body else None,
                                    requested_by=caller.username, rerun=rerun,
                                    rerun_token=uuid.uuid4().hex[:12] if rerun else None)
    if state.js is None:
        raise HTTPException(503, detail="The message bus is not reachable; try again shortly.")
    try:
        published = await bus.publish(state.js, state.topology, message)
    except Exception as exc:
        raise HTTPException(503, detail=f"Could not publish the trigger: {exc}") from exc
    return NightlyAccepted(message_id=message.message_id(), published=published,
                           target_date=message.target_date)


@router.post("/jobs/{job_id}/retry", status_code=202, response_model=JobRetried,
             responses={**ADMIN_ONLY,
                        404: {"model": ErrorResponse, "description": "No such job."},
                        409: {"model": ErrorResponse,
                              "description": "Not failed, or nothing recorded to re-drive."},
                        503: {"model": ErrorResponse, "description": "NATS unavailable."}},
             summary="Re-drive a failed job (admin)")
async def retry_job(state: StateDep, caller: AdminDep, job_id: uuid.UUID) -> JobRetried:
    """Re-publish the message recorded with the job's failure (what `sigmabatch jobs retry`
    does); its handler then runs the job again as a new row."""
    if state.js is None:
        raise HTTPException(503, detail="The message bus is not reachable; try again shortly.")
    try:
        msg_id = await redrive_job(state.database_url, state.js, state.topology, job_id)
    except NotRetryable as exc:
        raise HTTPException(404 if str(exc).startswith("no job") else 409,
                            detail=str(exc)) from exc
    return JobRetried(job_id=job_id, message_id=msg_id)


@router.get("/batch/dates", response_model=list[BatchDateOut], responses=ADMIN_ONLY,
            summary="The symbol batch per trading date, newest first (admin)")
async def batch_dates(
    session: SessionDep, caller: AdminDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 30,
    before: Annotated[dt.date | None, Query(description="Only dates before this one "
                                                        "(the next page).")] = None,
) -> list[dict[str, Any]]:
    """Each date's status, its run (phases with seconds), every symbol that failed with the
    reason, and how far the portfolio refresh of the date got."""
    return await queries.batch_dates(session, limit, before)


@router.get("/bus", response_model=BusStatus,
            responses={**ADMIN_ONLY,
                       503: {"model": ErrorResponse, "description": "NATS unavailable."}},
            summary="Streams and consumer lag (admin)")
async def bus_status(state: StateDep, caller: AdminDep) -> dict[str, Any]:
    """What `sigmabatch status` shows of the bus, from the API's own NATS connection."""
    if state.js is None:
        raise HTTPException(503, detail="The message bus is not reachable; try again shortly.")
    streams = []
    for name in (state.topology.jobs_stream, state.topology.events_stream):
        with contextlib.suppress(NotFoundError):
            info = await state.js.stream_info(name)
            streams.append({"stream": name, "messages": info.state.messages,
                            "bytes": info.state.bytes})
    return {"streams": streams, "consumers": await bus.consumer_lag(state.js, state.topology)}
