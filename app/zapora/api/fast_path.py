"""Answers a repeated GET /menu-items from this process's copy of the list, before routing.

The list route stores each response under its raw query string in MenuService.local, which
every menu write clears in all processes (Redis pub/sub) and which is used only while that
subscription is up. A hit skips the framework's routing and dependency machinery: the
request still passes RequestContextMiddleware (request id, metrics, access log)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from zapora.services.menus import CachedList

PATH = "/menu-items"


@dataclass(frozen=True)
class RouteLabel:
    """Stands in for the matched route, so metrics and logs name the template."""

    path: str


_LABEL = RouteLabel(PATH)


def cached_list_response(cached: CachedList, if_none_match: str | None) -> Response:
    headers = {"ETag": cached.etag, "Cache-Control": "no-cache"}
    if if_none_match is not None and cached.etag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    return Response(cached.body, media_type="application/json", headers=headers)


class CachedMenuItems:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == PATH:
            services = getattr(scope["app"].state, "services", None)
            hit = services.menus.local.get(scope["query_string"]) if services else None
            if hit is not None:
                scope["route"] = _LABEL
                if_none_match = None
                for name, value in scope["headers"]:
                    if name == b"if-none-match":
                        if_none_match = value.decode("latin-1")
                await cached_list_response(hit, if_none_match)(scope, receive, send)
                return
        await self.app(scope, receive, send)
