"""Who the caller is: lets a client check a token and learn whether its user is an admin
(the console shows Operations only then)."""

from __future__ import annotations

from services.status_api.api.deps import CallerDep
from services.status_api.api.responses import resource_router
from services.status_api.schemas import Me

router = resource_router("/me", "me")


@router.get("", response_model=Me, summary="The caller: user name and whether an admin")
async def me(caller: CallerDep) -> Me:
    return Me(user_id=caller.user_id, username=caller.username, is_admin=caller.is_admin)
