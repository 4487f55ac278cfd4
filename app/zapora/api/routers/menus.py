from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zapora.api.deps import FreshReads, OriginDep, PageDep, ServicesDep, StaffActor
from zapora.api.fast_path import cached_list_response
from zapora.api.openapi import errors
from zapora.api.schemas import (
    MenuIn,
    MenuItemIn,
    MenuItemOut,
    MenuItemPatch,
    MenuOut,
    MenuPatch,
    PageOut,
)
from zapora.api.strict_json import StrictJSONRoute
from zapora.services.common import Page
from zapora.services.menus import ItemFilter
from zapora.services.registry import Services

router = APIRouter(tags=["menus"], route_class=StrictJSONRoute)


class MenuItemQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(20, ge=1, le=100)
    offset: int = Field(0, ge=0, le=1_000_000)
    menu_id: UUID | None = None
    available: bool | None = None
    q: str | None = Field(None, max_length=100, pattern=r"^[^\x00]*$")


_ITEM_QUERY_DOC: dict[str, Any] = {
    "parameters": [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in MenuItemQuery.model_json_schema()["properties"].items()
    ]
}


# The hottest read, so it is the first route matched. Its query is validated by one pydantic
# model instead of FastAPI's per-parameter dependency machinery, which costs more than the
# Redis round trip did.
@router.get(
    "/menu-items",
    response_model=PageOut[MenuItemOut],
    openapi_extra=_ITEM_QUERY_DOC,
    responses={304: {"description": "Not modified: the `If-None-Match` ETag is current."}},
)
async def list_menu_items(request: Request) -> Response:
    try:
        query = MenuItemQuery.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": ("query", *err["loc"])} for err in exc.errors()]
        ) from exc
    services: Services = request.app.state.services
    generation = services.menus.local.generation
    cached = await services.menus.list_items_cached(
        Page(query.limit, query.offset), ItemFilter(query.menu_id, query.available, query.q)
    )
    # Kept under the raw query string: the next identical request is answered by
    # api.fast_path.CachedMenuItems without reaching this handler.
    services.menus.local.put(request.scope["query_string"], cached, generation)
    return cached_list_response(cached, request.headers.get("if-none-match"))


@router.get("/menus", response_model=PageOut[MenuOut])
async def list_menus(services: ServicesDep, page: PageDep, fresh: FreshReads) -> Any:
    rows, total = await services.menus.list_menus(page, fresh)
    return {"items": rows, "total": total, "limit": page.limit, "offset": page.offset}


@router.get("/menus/{menu_id}", response_model=MenuOut)
async def get_menu(menu_id: UUID, services: ServicesDep, fresh: FreshReads) -> Any:
    return await services.menus.get_menu(menu_id, fresh)


@router.post("/menus", status_code=201, response_model=MenuOut)
async def create_menu(
    body: MenuIn, actor: StaffActor, services: ServicesDep, origin: OriginDep
) -> Any:
    return await services.menus.create_menu(actor, origin, body.name, body.description)


@router.patch("/menus/{menu_id}", response_model=MenuOut)
async def update_menu(
    menu_id: UUID, body: MenuPatch, actor: StaffActor, services: ServicesDep, origin: OriginDep
) -> Any:
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    return await services.menus.update_menu(actor, origin, menu_id, changes)


@router.delete(
    "/menus/{menu_id}",
    status_code=204,
    responses=errors(409, s409="The menu still has items; delete or move them first."),
)
async def delete_menu(
    menu_id: UUID, actor: StaffActor, services: ServicesDep, origin: OriginDep
) -> Response:
    await services.menus.delete_menu(actor, origin, menu_id)
    return Response(status_code=204)


@router.get("/menu-items/{item_id}", response_model=MenuItemOut)
async def get_menu_item(item_id: UUID, services: ServicesDep, fresh: FreshReads) -> Any:
    return await services.menus.get_item(item_id, fresh)


_NO_MENU = errors(409, s409="The menu named by `menu_id` does not exist.")


@router.post("/menu-items", status_code=201, response_model=MenuItemOut, responses=_NO_MENU)
async def create_menu_item(
    body: MenuItemIn, actor: StaffActor, services: ServicesDep, origin: OriginDep
) -> Any:
    return await services.menus.create_item(actor, origin, body.model_dump())


@router.patch("/menu-items/{item_id}", response_model=MenuItemOut, responses=_NO_MENU)
async def update_menu_item(
    item_id: UUID, body: MenuItemPatch, actor: StaffActor, services: ServicesDep, origin: OriginDep
) -> Any:
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    return await services.menus.update_item(actor, origin, item_id, changes)


@router.delete("/menu-items/{item_id}", status_code=204)
async def delete_menu_item(
    item_id: UUID, actor: StaffActor, services: ServicesDep, origin: OriginDep
) -> Response:
    await services.menus.delete_item(actor, origin, item_id)
    return Response(status_code=204)
