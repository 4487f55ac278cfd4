from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter

from zapora.api.deps import AdminActor, CurrentActor, OriginDep, PageDep, ServicesDep
from zapora.api.openapi import errors
from zapora.api.schemas import PageOut, UserOut, UserPatch
from zapora.api.strict_json import StrictJSONRoute

router = APIRouter(prefix="/users", tags=["users"], route_class=StrictJSONRoute)


@router.get("/me", response_model=UserOut)
async def me(actor: CurrentActor, services: ServicesDep) -> Any:
    return await services.users.get(actor.id)


@router.get("", response_model=PageOut[UserOut])
async def list_users(actor: AdminActor, services: ServicesDep, page: PageDep) -> Any:
    rows, total = await services.users.list(page)
    return {"items": rows, "total": total, "limit": page.limit, "offset": page.offset}


@router.patch(
    # `:uuid` so that PATCH /users/me is an unknown method (405), not a bad id (422).
    "/{user_id:uuid}",
    response_model=UserOut,
    responses=errors(
        403, s403="Not an admin, or an admin changing their own role or deactivating themselves."
    ),
)
async def update_user(
    user_id: UUID, body: UserPatch, actor: AdminActor, services: ServicesDep, origin: OriginDep
) -> Any:
    return await services.users.update(actor, origin, user_id, body.role, body.is_active)
