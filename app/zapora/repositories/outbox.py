"""SQL for the outbox: rows written in a change's transaction, relayed and deleted by the worker."""

from __future__ import annotations

import json
from typing import Any

from zapora.infra.db import Conn, Row, execute, fetch_all, fetch_one

# Only one relay at a time (across workers), so rows leave in id order.
RELAY_LOCK_KEY = 0x7A61706F7261  # "zapora"


async def add(conn: Conn, topic: str, aggregate_id: str, payload: dict[str, Any]) -> None:
    await execute(
        conn,
        "INSERT INTO outbox (topic, aggregate_id, payload) VALUES (%s, %s, %s)",
        (topic, aggregate_id, json.dumps(payload)),
    )


async def try_relay_lock(conn: Conn) -> bool:
    row = await fetch_one(conn, "SELECT pg_try_advisory_xact_lock(%s) AS locked", (RELAY_LOCK_KEY,))
    return bool(row and row["locked"])


async def oldest(conn: Conn, limit: int) -> list[Row]:
    return await fetch_all(
        conn,
        "SELECT id, topic, aggregate_id, payload, created_at FROM outbox ORDER BY id LIMIT %s",
        (limit,),
    )


async def delete_upto(conn: Conn, ids: list[int]) -> int:
    return await execute(conn, "DELETE FROM outbox WHERE id = ANY(%s)", (ids,))


async def backlog(conn: Conn) -> Row | None:
    return await fetch_one(
        conn,
        "SELECT count(*) AS n, EXTRACT(EPOCH FROM now() - min(created_at)) AS age FROM outbox",
    )
