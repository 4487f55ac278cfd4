from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from zapora.api.deps import (
    SIGN_IN,
    Bearer,
    CurrentActor,
    FreshReads,
    OriginDep,
    ServicesDep,
    StaffActor,
    WindowDep,
    fresh_reads,
    get_origin,
    get_services,
)
from zapora.api.openapi import BAD_CURSOR, errors
from zapora.api.schemas import CursorPageOut, OrderIn, OrderOut, OrderStatus, StatusIn
from zapora.api.strict_json import StrictJSONRoute
from zapora.services.common import Unauthorized
from zapora.services.orders import Caller

router = APIRouter(prefix="/orders", tags=["orders"], route_class=StrictJSONRoute)


def _json(order: OrderOut, status: int = 200) -> Response:
    """The order serialised once by its own model: the service already validated it, so the
    response model's second validation and serialisation is skipped on the hot routes."""
    return Response(order.model_dump_json(), status_code=status, media_type="application/json")


IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$"),
]


@router.post(
    "",
    status_code=201,
    response_model=OrderOut,
    responses={
        201: {"description": "Created; a retry with the same Idempotency-Key gets it again."},
        **errors(
            409,
            s409="A menu item is unknown or not available, items are priced in different "
            "currencies, or this Idempotency-Key is still in progress or was used with a "
            "different body.",
        ),
    },
)
async def create_order(
    body: OrderIn,
    actor: CurrentActor,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    # Looked up here, not as dependencies: cheaper on the hot path (see get_order).
    services = await get_services(request)
    origin = await get_origin(request)
    items = [(line.menu_item_id, line.quantity) for line in body.items]
    caller = Caller(str(actor.id), actor.token_jti, actor.token_family)
    status, order, _ = await services.orders.create(
        caller, origin, items, body.notes, idempotency_key
    )
    return _json(order, status)


@router.get("", response_model=CursorPageOut[OrderOut], responses=errors(400, s400=BAD_CURSOR))
async def list_orders(
    actor: CurrentActor,
    services: ServicesDep,
    window: WindowDep,
    fresh: FreshReads,
    status: OrderStatus | None = None,
) -> Any:
    rows, cursor = await services.orders.list(actor, window, status, fresh)
    return {"items": rows, "limit": window.limit, "next_cursor": cursor}


@router.get("/{order_id}", response_model=OrderOut, responses=errors(401))
async def get_order(order_id: UUID, request: Request, credentials: Bearer) -> Response:
    # current_actor's checks, made by the service in the same round trip as the order read.
    # The services and the read routing are looked up here rather than as dependencies:
    # each dependency costs FastAPI's resolver more than the lookup itself.
    if credentials is None:
        raise Unauthorized(SIGN_IN)
    services = await get_services(request)
    fresh = await fresh_reads(request, services)
    actor, order = await services.orders.get_signed_in(
        services.auth, credentials.credentials, order_id, fresh
    )
    request.state.user_id = str(actor.id)
    return _json(order)


@router.patch(
    "/{order_id}/status",
    response_model=OrderOut,
    responses=errors(409, s409="The order cannot move to this status from its current one."),
)
async def change_status(
    order_id: UUID, body: StatusIn, actor: StaffActor, services: ServicesDep, origin: OriginDep
) -> Any:
    return await services.orders.advance(actor, origin, order_id, body.status)


@router.post(
    "/{order_id}/cancel",
    response_model=OrderOut,
    responses=errors(409, s409="The order can no longer be cancelled by this caller."),
)
async def cancel_order(
    order_id: UUID, actor: CurrentActor, services: ServicesDep, origin: OriginDep
) -> Any:
    return await services.orders.cancel(actor, origin, order_id)
