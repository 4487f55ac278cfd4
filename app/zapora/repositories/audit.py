"""SQL for audit events."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from zapora.infra.db import Conn, Row, execute, fetch_all
from zapora.repositories import keyset


async def insert(conn: Conn, params: tuple[Any, ...]) -> None:
    await execute(
        conn,
        "INSERT INTO audit_events (actor_id, action, target_type, target_id, client_ip,"
        " request_id, details) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        params,
    )


async def page(
    conn: Conn,
    limit: int,
    offset: int,
    after: tuple[datetime, UUID] | None,
    actor_id: UUID | None,
    action: str | None,
) -> list[Row]:
    """Newest first, keyset like repositories.orders.page."""
    where, params = keyset.clauses({"actor_id": actor_id, "action": action}, "occurred_at", after)
    return await fetch_all(
        conn,
        "SELECT id, occurred_at, actor_id, action, target_type, target_id, client_ip,"
        f" request_id, details FROM audit_events {where} LIMIT %s OFFSET %s",
        [*params, limit, offset],
    )
