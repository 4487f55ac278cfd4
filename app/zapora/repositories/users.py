"""SQL for users."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from zapora.infra.db import Conn, Row, fetch_all, fetch_one

_COLUMNS = "id, email, password_hash, full_name, role, is_active, created_at, updated_at"


async def insert(conn: Conn, email: str, password_hash: str, full_name: str, role: str) -> Row:
    row = await fetch_one(
        conn,
        f"INSERT INTO users (email, password_hash, full_name, role) VALUES (%s, %s, %s, %s)"
        f" RETURNING {_COLUMNS}",
        (email, password_hash, full_name, role),
    )
    assert row is not None
    return row


async def by_id(conn: Conn, user_id: UUID | str) -> Row | None:
    return await fetch_one(conn, f"SELECT {_COLUMNS} FROM users WHERE id = %s", (user_id,))


async def by_email(conn: Conn, email: str) -> Row | None:
    return await fetch_one(
        conn,
        f"SELECT {_COLUMNS} FROM users WHERE lower(email) = lower(%s)",
        (email,),
    )


async def page(conn: Conn, limit: int, offset: int) -> tuple[list[Row], int]:
    total = await fetch_one(conn, "SELECT count(*) AS n FROM users")
    rows = await fetch_all(
        conn,
        f"SELECT {_COLUMNS} FROM users ORDER BY created_at, id LIMIT %s OFFSET %s",
        (limit, offset),
    )
    return rows, int(total["n"]) if total else 0


async def update(conn: Conn, user_id: UUID, changes: dict[str, Any]) -> Row | None:
    # Column names come from the service's fixed allow-list, never from the request.
    sets = ", ".join(f"{column} = %({column})s" for column in changes)
    return await fetch_one(
        conn,
        f"UPDATE users SET {sets}, updated_at = now() WHERE id = %(id)s RETURNING {_COLUMNS}",
        {**changes, "id": user_id},
    )
