from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query

from zapora.api.deps import AdminActor, ServicesDep, WindowDep
from zapora.api.openapi import BAD_CURSOR, errors
from zapora.api.schemas import AuditEventOut, CursorPageOut
from zapora.api.strict_json import StrictJSONRoute

router = APIRouter(tags=["audit"], route_class=StrictJSONRoute)


@router.get(
    "/audit-events",
    response_model=CursorPageOut[AuditEventOut],
    responses=errors(400, s400=BAD_CURSOR),
)
async def list_audit_events(
    actor: AdminActor,
    services: ServicesDep,
    window: WindowDep,
    actor_id: UUID | None = None,
    action: Annotated[str | None, Query(max_length=100, pattern=r"^[a-z_.]+$")] = None,
) -> Any:
    rows, cursor = await services.audit.list(window, actor_id, action)
    return {"items": rows, "limit": window.limit, "next_cursor": cursor}
