from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query

from zapora.api.deps import AdminActor, PageDep, ServicesDep
from zapora.api.schemas import AuditEventOut, PageOut
from zapora.api.strict_json import StrictJSONRoute

router = APIRouter(tags=["audit"], route_class=StrictJSONRoute)


@router.get("/audit-events", response_model=PageOut[AuditEventOut])
async def list_audit_events(
    actor: AdminActor,
    services: ServicesDep,
    page: PageDep,
    actor_id: UUID | None = None,
    action: Annotated[str | None, Query(max_length=100, pattern=r"^[a-z_.]+$")] = None,
) -> Any:
    rows, total = await services.audit.list(page, actor_id, action)
    return {"items": rows, "total": total, "limit": page.limit, "offset": page.offset}
