"""SQL for menus and menu items."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from zapora.infra.db import Conn, Row, fetch_all, fetch_one

MENU_COLUMNS = "id, name, description, created_at, updated_at"
ITEM_COLUMNS = "id, menu_id, name, description, price_minor, currency, available"


async def menus_page(conn: Conn, limit: int, offset: int) -> tuple[list[Row], int]:
    total = await fetch_one(conn, "SELECT count(*) AS n FROM menus")
    rows = await fetch_all(
        conn,
        f"SELECT {MENU_COLUMNS} FROM menus ORDER BY name, id LIMIT %s OFFSET %s",
        (limit, offset),
    )
    return rows, int(total["n"]) if total else 0


async def menu(conn: Conn, menu_id: UUID) -> Row | None:
    return await fetch_one(conn, f"SELECT {MENU_COLUMNS} FROM menus WHERE id = %s", (menu_id,))


async def insert_menu(conn: Conn, name: str, description: str) -> Row:
    row = await fetch_one(
        conn,
        f"INSERT INTO menus (name, description) VALUES (%s, %s) RETURNING {MENU_COLUMNS}",
        (name, description),
    )
    assert row is not None
    return row


async def update_row(
    conn: Conn, table: str, columns: str, row_id: UUID, changes: dict[str, Any]
) -> Row | None:
    # `table`, `columns` and the keys of `changes` come from fixed allow-lists in the service.
    sets = ", ".join(f"{column} = %({column})s" for column in changes)
    return await fetch_one(
        conn,
        f"UPDATE {table} SET {sets}, updated_at = now() WHERE id = %(id)s RETURNING {columns}",
        {**changes, "id": row_id},
    )


async def menu_has_items(conn: Conn, menu_id: UUID) -> bool:
    # Locks the menu row, so no item is added to it between this check and the delete.
    row = await fetch_one(
        conn,
        "SELECT EXISTS (SELECT 1 FROM menu_items WHERE menu_id = m.id) AS has_items"
        " FROM menus m WHERE m.id = %s FOR UPDATE",
        (menu_id,),
    )
    return bool(row and row["has_items"])


async def delete_row(conn: Conn, table: str, row_id: UUID) -> bool:
    row = await fetch_one(conn, f"DELETE FROM {table} WHERE id = %s RETURNING id", (row_id,))
    return row is not None


async def items_page(
    conn: Conn,
    limit: int,
    offset: int,
    menu_id: UUID | None,
    available: bool | None,
    q: str | None,
) -> tuple[list[Row], int]:
    clauses: list[str] = []
    params: list[Any] = []
    if menu_id is not None:
        clauses.append("menu_id = %s")
        params.append(menu_id)
    if available is not None:
        clauses.append("available = %s")
        params.append(available)
    if q:
        # The search text is a bound parameter; LIKE wildcards in it are escaped.
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        clauses.append("(name ILIKE %s OR description ILIKE %s)")
        params.extend([f"%{escaped}%", f"%{escaped}%"])
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    total = await fetch_one(conn, f"SELECT count(*) AS n FROM menu_items {where}", params)
    rows = await fetch_all(
        conn,
        f"SELECT {ITEM_COLUMNS} FROM menu_items {where} ORDER BY name, id LIMIT %s OFFSET %s",
        [*params, limit, offset],
    )
    return rows, int(total["n"]) if total else 0


async def item(conn: Conn, item_id: UUID) -> Row | None:
    return await fetch_one(conn, f"SELECT {ITEM_COLUMNS} FROM menu_items WHERE id = %s", (item_id,))


async def insert_item(conn: Conn, values: dict[str, Any]) -> Row:
    row = await fetch_one(
        conn,
        "INSERT INTO menu_items (menu_id, name, description, price_minor, currency, available)"
        " VALUES (%(menu_id)s, %(name)s, %(description)s, %(price_minor)s, %(currency)s,"
        f" %(available)s) RETURNING {ITEM_COLUMNS}",
        values,
    )
    assert row is not None
    return row
