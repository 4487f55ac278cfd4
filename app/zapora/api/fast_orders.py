"""The common case of the two hot order routes, answered before routing (like api/fast_path
for the cached list): `GET /orders/{id}` and `POST /orders` from a client with a bearer token.

Only requests whose every part the routed handler would accept are answered here: one
`Authorization: Bearer` header, a path id in canonical form, and for a POST a verified access
token, one `Content-Type: application/json`, a body that parses (duplicate keys refused) and
validates as `OrderIn`, and a well-formed `Idempotency-Key` if any. Anything else goes on to
the routed handler unchanged (a POST's body handed back as it was read), so every refusal of
the request's form is the framework's own answer. What is answered here goes through the same
services, with the same checks in the same order; domain errors are rendered by the same
function as the routed handlers' (api/problems.domain_problem), and any other exception goes
up to RequestContextMiddleware, which answers it as the routed path's handlers would.

What this skips: routing, the dependency resolution and the response model's validation (the
order is serialised by pydantic_core straight from the service's dict: the same bytes, which
tests/app/test_fast_orders.py compares with the routed handler's)."""

from __future__ import annotations

import re
from uuid import UUID

from pydantic_core import to_json
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zapora.api.deps import fresh_for
from zapora.api.fast_path import RouteLabel
from zapora.api.problems import domain_problem
from zapora.api.schemas import OrderIn
from zapora.api.strict_json import strict_loads
from zapora.infra.security import InvalidToken
from zapora.services.common import DomainError, Origin, RateLimited, Unauthorized
from zapora.services.orders import Caller
from zapora.services.registry import Services

_ORDER_PATH = re.compile(r"/orders/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
# As the route's Idempotency-Key parameter: 1..255 visible ASCII characters.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_GET_LABEL = RouteLabel("/orders/{order_id}")
_POST_LABEL = RouteLabel("/orders")
_WANTED = {b"authorization", b"content-type", b"idempotency-key"}


def _headers(scope: Scope) -> dict[bytes, str] | None:
    """The headers this path reads, or None when one of them comes twice."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in _WANTED:
            if name in found:
                return None
            found[name] = value.decode("latin-1")
    return found


def _bearer(authorization: str | None) -> str | None:
    """The credentials as fastapi.security.HTTPBearer reads them, or None."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    credentials = credentials.strip()
    if not scheme or not credentials or scheme.lower() != "bearer":
        return None
    return credentials


class OrderFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            path = scope["path"]
            if method == "GET" and path.startswith("/orders/"):
                match = _ORDER_PATH.fullmatch(path)
                headers = _headers(scope) if match else None
                token = _bearer(headers.get(b"authorization")) if headers is not None else None
                if match and headers is not None and token is not None:
                    await self._get(scope, receive, send, match.group(1), headers, token)
                    return
            elif method == "POST" and path == "/orders":
                await self._post(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _get(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        order_id: str,
        headers: dict[bytes, str],
        token: str,
    ) -> None:
        scope["route"] = _GET_LABEL
        services: Services = scope["app"].state.services
        try:
            fresh = await fresh_for(services, headers[b"authorization"])
            actor, order = await services.orders.get_signed_in(
                services.auth, token, UUID(order_id), fresh
            )
        except DomainError as exc:
            await domain_problem(exc)(scope, receive, send)
            return
        scope["state"]["user_id"] = str(actor.id)
        await Response(to_json(order), media_type="application/json")(scope, receive, send)

    async def _post(self, scope: Scope, receive: Receive, send: Send) -> None:
        services: Services | None = getattr(scope["app"].state, "services", None)
        headers = _headers(scope)
        if services is None or headers is None:
            await self.app(scope, receive, send)
            return
        token = _bearer(headers.get(b"authorization"))
        key = headers.get(b"idempotency-key")
        if (
            token is None
            or headers.get(b"content-type") != "application/json"
            or (key is not None and not _IDEMPOTENCY_KEY.fullmatch(key))
        ):
            await self.app(scope, receive, send)
            return
        try:
            claims = services.infra.tokens.decode(token, "access")
            user_id = UUID(claims.sub)
        except (InvalidToken, ValueError):
            # The routed handler answers 401, before it looks at the body.
            await self.app(scope, receive, send)
            return
        body, replay = await _read_body(receive)
        try:
            order_in = OrderIn.model_validate(strict_loads(body)) if body else None
        except Exception:  # noqa: BLE001 - any body it cannot take (bad JSON, too deep, invalid)
            order_in = None  # goes to the routed handler, which answers it as it always has
        if order_in is None:
            await self.app(scope, replay, send)
            return
        scope["route"] = _POST_LABEL
        state = scope["state"]
        state["user_id"] = str(user_id)
        origin = Origin(client_ip=state.get("client_ip"), request_id=state.get("request_id"))
        items = [(line.menu_item_id, line.quantity) for line in order_in.items]
        try:
            # The per-user write limit, as current_actor applies it.
            retry_after = await services.infra.check_write_rate(user_id)
            if retry_after:
                raise RateLimited("Too many writes; try again later.", retry_after)
            status, order, _ = await services.orders.create(
                Caller(claims.sub, claims.jti, claims.fam), origin, items, order_in.notes, key
            )
        except DomainError as exc:
            if isinstance(exc, Unauthorized):
                state.pop("user_id", None)
            await domain_problem(exc)(scope, receive, send)
            return
        await JSONResponse(order, status_code=status)(scope, receive, send)


async def _read_body(receive: Receive) -> tuple[bytes | None, Receive]:
    """The whole body (None when the client left before sending all of it), and a receive
    that hands out what was read again, then the rest of the conversation."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    complete = messages[-1]["type"] == "http.request"
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")

    async def replay() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return (body if complete else None), replay
