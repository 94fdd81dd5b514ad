"""Admin actions: publishing the nightly trigger."""

from __future__ import annotations

from fastapi import HTTPException

from libs.common import bus
from libs.common.events import BatchNightlyRequested
from services.status_api.api.deps import AdminDep, StateDep
from services.status_api.api.responses import ADMIN_ONLY, resource_router
from services.status_api.schemas import ErrorResponse, NightlyAccepted, NightlyRequest

router = resource_router("/admin", "admin")


@router.post("/batch/nightly", status_code=202, response_model=NightlyAccepted,
             responses={**ADMIN_ONLY,
                        503: {"model": ErrorResponse, "description": "NATS unavailable."}},
             summary="Trigger the nightly batch (admin)")
async def trigger_nightly(state: StateDep, caller: AdminDep,
                          body: NightlyRequest | None = None) -> NightlyAccepted:
    message = BatchNightlyRequested(target_date=body.target_date if body else None,
                                    requested_by=caller.username)
    if state.js is None:
        raise HTTPException(503, detail="The message bus is not reachable; try again shortly.")
    try:
        published = await bus.publish(state.js, state.topology, message)
    except Exception as exc:
        raise HTTPException(503, detail=f"Could not publish the trigger: {exc}") from exc
    return NightlyAccepted(message_id=message.message_id(), published=published,
                           target_date=message.target_date)
