"""Orders: server-side pricing, idempotent creation, status state machine, cancel rules."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import psycopg
from pydantic import BaseModel, ConfigDict

from zapora.infra.db import Conn, Row
from zapora.infra.metrics import ORDERS_CREATED, REVENUE_MINOR
from zapora.repositories import orders as repo
from zapora.repositories import outbox
from zapora.services import pagination
from zapora.services.audit import AuditService
from zapora.services.auth import BAD_TOKEN, AuthService
from zapora.services.common import (
    STAFF_ROLES,
    Actor,
    Conflict,
    NotFound,
    Origin,
    Role,
    Unauthorized,
)
from zapora.services.context import Infra
from zapora.services.outbox import ORDER_EVENT
from zapora.services.pagination import Window

NEXT_STATUS = {
    "pending": "confirmed",
    "confirmed": "preparing",
    "preparing": "ready",
    "ready": "delivered",
}
OWNER_CANCELLABLE = frozenset({"pending", "confirmed"})
STAFF_CANCELLABLE = frozenset({"pending", "confirmed", "preparing", "ready"})


def request_fingerprint(items: list[tuple[UUID, int]], notes: str | None) -> str:
    canonical = json.dumps([[str(i), q] for i, q in items] + [notes], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


OrderStatus = Literal["pending", "confirmed", "preparing", "ready", "delivered", "cancelled"]


class OrderLineOut(BaseModel):
    model_config = ConfigDict(extra="ignore")

    menu_item_id: UUID
    name: str
    quantity: int
    unit_price_minor: int


class OrderOut(BaseModel):
    """The one definition of an order as the API shows it: the response model of every
    order route (named as the OpenAPI document names it). Rows and the JSON body the order's
    statement builds are validated into it, so a column or key that drifts fails here instead
    of reaching a client, and every route renders times and ids alike."""

    model_config = ConfigDict(extra="ignore")

    id: UUID
    user_id: UUID
    status: OrderStatus
    items: list[OrderLineOut]
    total_minor: int
    currency: str
    notes: str | None
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, order: Row, lines: list[Row]) -> OrderOut:
        # currency is char(3) in the table; rtrim'd in the statement's own body.
        return cls.model_validate({**order, "currency": order["currency"].strip(), "items": lines})


@dataclass(frozen=True)
class Caller:
    """Who orders, from a verified access token: the user's row is checked with the order."""

    user_id: str
    jti: str
    family: str | None


class OrderService:
    def __init__(self, infra: Infra, audit: AuditService) -> None:
        self.infra = infra
        self.audit = audit

    async def create(
        self,
        caller: Caller,
        origin: Origin,
        items: list[tuple[UUID, int]],
        notes: str | None,
        idempotency_key: str | None,
    ) -> tuple[int, OrderOut, UUID]:
        """Returns (status code, order, caller's id); a replayed key returns the first
        response. The caller's row is checked here, in the order's own statement (active, token
        not revoked: else Unauthorized), so the request makes one round trip to PostgreSQL.
        With a key, a connection lost under the statement is retried once (`Database.write`)."""
        # An item may appear on several lines (each line's quantity is 1..50), as the schema
        # allows; lines stay as sent.
        fingerprint = request_fingerprint(items, notes)
        try:
            # With a key the statement is safe to repeat when its connection is lost under it
            # (a PostgreSQL switchover): the repeat replays the first response if the first
            # attempt committed. Without one the outcome is unknown: 503.
            row = await self.infra.db.write(
                lambda conn: repo.create(
                    conn,
                    caller.user_id,
                    caller.jti,
                    caller.family,
                    idempotency_key,
                    fingerprint,
                    items,
                    notes,
                    ORDER_EVENT,
                    origin.client_ip,
                    origin.request_id,
                ),
                retry=idempotency_key is not None,
            )
        except psycopg.errors.UniqueViolation:
            # A concurrent request with this key committed first: answer what it answered.
            assert idempotency_key is not None
            record = await self.infra.db.read(
                lambda conn: repo.idempotency_record(conn, UUID(caller.user_id), idempotency_key),
                fresh=True,
            )
            user_id = UUID(caller.user_id)
            return *self._replay(record, fingerprint), user_id
        if row["role"] is None:
            raise Unauthorized(BAD_TOKEN)
        user_id = UUID(caller.user_id)
        if row["existing"] is not None:
            return *self._replay(row["existing"], fingerprint), user_id
        body = row["body"]
        if body is None:
            currencies: set[str] = set()
            for (item_id, _), line in zip(items, row["lines"], strict=True):
                if not line["available"]:
                    raise Conflict(f"Menu item {item_id} is unknown or not available.")
                currencies.add(line["currency"])
            raise Conflict("All items of an order must be priced in one currency.")
        currency = row["currency"]
        ORDERS_CREATED.labels(currency).inc()
        REVENUE_MINOR.labels(currency).inc(row["total_minor"])
        if Role(row["role"]) in STAFF_ROLES:
            self.audit.announce("order.created", user_id, origin, ("order", str(body["id"])), {})
        await self.infra.mark_fresh(user_id)
        return 201, OrderOut.model_validate(body), user_id

    @staticmethod
    def _replay(record: Row | None, fingerprint: str) -> tuple[int, OrderOut]:
        if record is None or record["response_body"] is None:
            raise Conflict("A request with this Idempotency-Key is still in progress.")
        if record["request_hash"] != fingerprint:
            raise Conflict("This Idempotency-Key was already used with a different request body.")
        return int(record["response_status"]), OrderOut.model_validate(record["response_body"])

    async def list(
        self, actor: Actor, window: Window, status: str | None, fresh: bool
    ) -> tuple[list[OrderOut], str | None]:
        owner = None if actor.is_staff else actor.id
        # The cursor is bound to the caller's view and filter: reused elsewhere it is refused.
        scope = f"orders:{owner or '*'}:{status or ''}"
        start = pagination.after(self.infra.cursors, scope, window)

        async def read(conn: Conn) -> tuple[list[Row], str | None, dict[UUID, list[Row]]]:
            found = await repo.page(conn, window.limit + 1, window.offset, start, owner, status)
            rows, cursor = pagination.finish(self.infra.cursors, scope, window, found, "created_at")
            lines = await repo.lines(conn, [row["id"] for row in rows]) if rows else {}
            return rows, cursor, lines

        rows, cursor, lines = await self.infra.db.read(read, fresh=fresh)
        return [OrderOut.from_row(row, lines.get(row["id"], [])) for row in rows], cursor

    async def get(self, actor: Actor, order_id: UUID, fresh: bool) -> OrderOut:
        row = await self.infra.db.read(
            lambda conn: repo.get_with_lines(conn, order_id), fresh=fresh
        )
        return self._visible(actor, row)

    @staticmethod
    def _visible(actor: Actor, row: Row | None) -> OrderOut:
        # Someone else's order looks exactly like a missing one.
        if row is None or (not actor.is_staff and row["user_id"] != actor.id):
            raise NotFound("Order not found.")
        return OrderOut.from_row(row, row["lines"])

    async def get_signed_in(
        self, auth: AuthService, token: str, order_id: UUID, fresh: bool
    ) -> tuple[Actor, OrderOut]:
        """Authenticate the bearer token and read the order: the checks of `current_actor`
        then `get`, in that order. When the order is read from the primary anyway (no
        replica, or the caller wrote recently), the caller's row and the order come in one
        statement, so the request makes one round trip instead of two."""
        if not fresh:
            actor, _ = await auth.authenticate(token)
            return actor, await self.get(actor, order_id, fresh)
        claims = auth.access_claims(token)
        user, row = await self.infra.db.read(
            lambda conn: repo.caller_and_order(conn, claims.sub, claims.jti, claims.fam, order_id),
            fresh=True,
        )
        actor = auth.actor_for(claims, user)
        return actor, self._visible(actor, row)

    async def advance(self, actor: Actor, origin: Origin, order_id: UUID, status: str) -> OrderOut:
        async with self.infra.db.transaction() as conn:
            row = await repo.get(conn, order_id, for_update=True)
            if row is None:
                raise NotFound("Order not found.")
            if NEXT_STATUS.get(row["status"]) != status:
                raise Conflict(f"An order cannot move from {row['status']} to {status}.")
            body = await self._set_status(conn, actor, origin, row, status, "order.status_changed")
        await self._after_change(actor, body)
        return body

    async def cancel(self, actor: Actor, origin: Origin, order_id: UUID) -> OrderOut:
        async with self.infra.db.transaction() as conn:
            row = await repo.get(conn, order_id, for_update=True)
            if row is None or (not actor.is_staff and row["user_id"] != actor.id):
                raise NotFound("Order not found.")
            allowed = STAFF_CANCELLABLE if actor.is_staff else OWNER_CANCELLABLE
            if row["status"] not in allowed:
                raise Conflict(f"An order that is {row['status']} can no longer be cancelled.")
            body = await self._set_status(conn, actor, origin, row, "cancelled", "order.cancelled")
        await self._after_change(actor, body)
        return body

    async def _set_status(
        self, conn: Conn, actor: Actor, origin: Origin, row: Row, status: str, action: str
    ) -> OrderOut:
        updated = await repo.set_status(conn, row["id"], status)
        assert updated is not None
        await self._event(conn, updated, "order.status_changed")
        if actor.is_staff:
            await self.audit.record(
                action,
                actor_id=actor.id,
                origin=origin,
                target_type="order",
                target_id=row["id"],
                details={"from": row["status"], "to": status},
                conn=conn,
            )
        lines = await repo.lines(conn, [row["id"]])
        return OrderOut.from_row(updated, lines.get(row["id"], []))

    async def _after_change(self, actor: Actor, body: OrderOut) -> None:
        await self.infra.mark_fresh(actor.id)

    async def _event(self, conn: Conn, order: dict[str, Any], event: str) -> None:
        # In the change's transaction: the worker relays it to the stream (services.outbox),
        # so a committed change always gets its event and a rolled-back one never does.
        await outbox.add(
            conn,
            ORDER_EVENT,
            str(order["id"]),
            {
                "event": event,
                "order_id": str(order["id"]),
                "status": order["status"],
                "version": str(order["version"]),
                "occurred_at": datetime.now(UTC).isoformat(),
            },
        )
