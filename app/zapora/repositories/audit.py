"""SQL for audit events."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from zapora.infra.db import Conn, Row, execute, fetch_all, fetch_one


async def insert(conn: Conn, params: tuple[Any, ...]) -> None:
    await execute(
        conn,
        "INSERT INTO audit_events (actor_id, action, target_type, target_id, client_ip,"
        " request_id, details) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        params,
    )


async def page(
    conn: Conn, limit: int, offset: int, actor_id: UUID | None, action: str | None
) -> tuple[list[Row], int]:
    clauses: list[str] = []
    params: list[Any] = []
    if actor_id is not None:
        clauses.append("actor_id = %s")
        params.append(actor_id)
    if action is not None:
        clauses.append("action = %s")
        params.append(action)
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    total = await fetch_one(conn, f"SELECT count(*) AS n FROM audit_events {where}", params)
    rows = await fetch_all(
        conn,
        "SELECT id, occurred_at, actor_id, action, target_type, target_id, client_ip,"
        f" request_id, details FROM audit_events {where}"
        " ORDER BY occurred_at DESC, id LIMIT %s OFFSET %s",
        [*params, limit, offset],
    )
    return rows, int(total["n"]) if total else 0
