"""Request dependencies: the services, the caller, the page, and permission checks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from zapora.infra.security import InvalidToken
from zapora.services.common import (
    Actor,
    Forbidden,
    Origin,
    Page,
    RateLimited,
    Role,
    Unauthorized,
)
from zapora.services.pagination import CURSOR_LENGTH, CURSOR_PATTERN, MAX_OFFSET, Window
from zapora.services.registry import Services

SIGN_IN = "Sign in to use this endpoint."
_bearer = HTTPBearer(auto_error=False)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_origin(request: Request) -> Origin:
    state = request.state
    return Origin(
        client_ip=getattr(state, "client_ip", None),
        request_id=getattr(state, "request_id", None),
    )


OriginDep = Annotated[Origin, Depends(get_origin)]


async def current_actor(request: Request, services: ServicesDep, credentials: Bearer) -> Actor:
    if credentials is None:
        raise Unauthorized(SIGN_IN)
    actor, _ = await services.auth.authenticate(credentials.credentials)
    request.state.user_id = str(actor.id)
    if request.method not in ("GET", "HEAD"):
        # Per-user write limit: the edge limits per address, which one user behind many
        # addresses (or many users behind one) would slip past.
        retry_after = await services.infra.check_write_rate(actor.id)
        if retry_after:
            raise RateLimited("Too many writes; try again later.", retry_after)
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]


async def fresh_reads(request: Request, services: ServicesDep) -> bool:
    """True when the caller wrote recently and must read from the primary.

    Public reads take an optional token only as this routing hint, so they read the header
    themselves: a security requirement in the OpenAPI document would tell clients the token
    is needed."""
    return await fresh_for(services, request.headers.get("authorization", ""))


async def fresh_for(services: Services, authorization: str) -> bool:
    """fresh_reads for this Authorization header's value."""
    if services.infra.db.replica is None:
        return True
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    try:
        claims = services.infra.tokens.decode(token.strip(), "access")
    except InvalidToken:
        return False
    return await services.infra.is_fresh(claims.sub)


FreshReads = Annotated[bool, Depends(fresh_reads)]


def _require(*roles: Role):  # type: ignore[no-untyped-def]
    async def check(
        actor: CurrentActor, services: ServicesDep, origin: OriginDep, request: Request
    ) -> Actor:
        if actor.role not in roles:
            await services.audit.record(
                "permission.denied",
                actor_id=actor.id,
                origin=origin,
                details={"method": request.method, "path": request.url.path, "role": actor.role},
            )
            raise Forbidden("You do not have permission to do this.")
        return actor

    return check


StaffActor = Annotated[Actor, Depends(_require(Role.staff, Role.admin))]
AdminActor = Annotated[Actor, Depends(_require(Role.admin))]


async def get_page(
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Page:
    return Page(limit=limit, offset=offset)


PageDep = Annotated[Page, Depends(get_page)]


async def get_window(
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None,
        Query(
            min_length=CURSOR_LENGTH,
            max_length=CURSOR_LENGTH,
            pattern=CURSOR_PATTERN,
            description="`next_cursor` of the previous page, as returned (opaque).",
        ),
    ] = None,
    offset: Annotated[
        int,
        Query(
            ge=0,
            le=MAX_OFFSET,
            deprecated=True,
            description="Rows to skip (after the cursor's position, if any). Kept for older "
            "clients and bounded; page with `cursor` instead.",
        ),
    ] = 0,
) -> Window:
    return Window(limit=limit, cursor=cursor, offset=offset)


WindowDep = Annotated[Window, Depends(get_window)]
