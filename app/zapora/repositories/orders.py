"""SQL for orders, their lines and idempotency keys."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

from zapora.infra.db import Conn, Row, execute, fetch_all, fetch_one, send
from zapora.repositories import keyset, tokens
from zapora.repositories.menus import ITEM_COLUMNS

_COLUMNS = "id, user_id, status, total_minor, currency, notes, version, created_at, updated_at"


async def insert(
    conn: Conn, user_id: UUID, total_minor: int, currency: str, notes: str | None
) -> Row:
    row = await fetch_one(
        conn,
        "INSERT INTO orders (user_id, total_minor, currency, notes) VALUES (%s, %s, %s, %s)"
        f" RETURNING {_COLUMNS}",
        (user_id, total_minor, currency, notes),
    )
    assert row is not None
    return row


async def insert_lines(conn: Conn, order_id: UUID, lines: list[dict[str, Any]]) -> None:
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO order_items (order_id, line_no, menu_item_id, name, quantity,"
            " unit_price_minor) VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (
                    order_id,
                    n,
                    line["menu_item_id"],
                    line["name"],
                    line["quantity"],
                    line["unit_price_minor"],
                )
                for n, line in enumerate(lines, start=1)
            ],
        )


async def lines(conn: Conn, order_ids: list[UUID]) -> dict[UUID, list[Row]]:
    rows = await fetch_all(
        conn,
        "SELECT order_id, menu_item_id, name, quantity, unit_price_minor FROM order_items"
        " WHERE order_id = ANY(%s) ORDER BY order_id, line_no",
        (order_ids,),
    )
    out: dict[UUID, list[Row]] = {}
    for row in rows:
        out.setdefault(row.pop("order_id"), []).append(row)
    return out


async def get(conn: Conn, order_id: UUID, for_update: bool = False) -> Row | None:
    lock = " FOR UPDATE" if for_update else ""
    return await fetch_one(conn, f"SELECT {_COLUMNS} FROM orders WHERE id = %s{lock}", (order_id,))


def _with_lines(columns: str, where: str) -> str:
    return (
        f"SELECT {columns}, COALESCE((SELECT json_agg(json_build_object("
        "'menu_item_id', i.menu_item_id, 'name', i.name, 'quantity', i.quantity,"
        " 'unit_price_minor', i.unit_price_minor) ORDER BY i.line_no)"
        " FROM order_items i WHERE i.order_id = orders.id), '[]'::json) AS {lines}"
        f" FROM orders WHERE {where}"
    )


_GET_WITH_LINES = _with_lines(_COLUMNS, "id = %s").format(lines="lines")
# The same order read joined to the caller's authentication row: every order column as
# order_<name>, NULL when no such order exists.
_PREFIXED = ", ".join(f"{c} AS order_{c}" for c in _COLUMNS.split(", "))
_CALLER_AND_ORDER = tokens.user_unless_revoked_sql(
    join=" LEFT JOIN LATERAL ("
    + _with_lines(_PREFIXED, "id = %(order_id)s").format(lines="order_lines")
    + ") o ON true",
    columns=", o.*",
)


async def get_with_lines(conn: Conn, order_id: UUID) -> Row | None:
    """The order and its lines in one round trip (the hot read)."""
    return await fetch_one(conn, _GET_WITH_LINES, (order_id,))


async def caller_and_order(
    conn: Conn, user_id: str, jti: str, family: str | None, order_id: UUID
) -> tuple[Row | None, Row | None]:
    """The caller's row for authentication (tokens.user_unless_revoked) and the order with
    its lines, in one statement: for reads that go to the primary anyway."""
    row = await fetch_one(
        conn,
        _CALLER_AND_ORDER,
        {"id": user_id, "jti": jti, "family": family or "", "order_id": order_id},
    )
    if row is None:
        return None, None
    order = {name[6:]: row.pop(name) for name in list(row) if name.startswith("order_")}
    return row, (order if order["id"] is not None else None)


async def page(
    conn: Conn,
    limit: int,
    offset: int,
    after: tuple[datetime, UUID] | None,
    user_id: UUID | None,
    status: str | None,
) -> list[Row]:
    """Newest first; rows strictly after `after` (keyset), `offset` of them skipped. The order
    matches the indexes of migration 0003, so a page reads only its own rows."""
    where, params = keyset.clauses({"user_id": user_id, "status": status}, "created_at", after)
    return await fetch_all(
        conn,
        f"SELECT {_COLUMNS} FROM orders {where} LIMIT %s OFFSET %s",
        [*params, limit, offset],
    )


async def set_status(conn: Conn, order_id: UUID, status: str) -> Row | None:
    return await fetch_one(
        conn,
        "UPDATE orders SET status = %s, version = version + 1, updated_at = now()"
        f" WHERE id = %s RETURNING {_COLUMNS}",
        (status, order_id),
    )


async def claim_and_price(
    conn: Conn, user_id: UUID, key: str | None, request_hash: str, item_ids: list[UUID]
) -> tuple[bool, list[Row]]:
    """(whether this call owns the Idempotency-Key, or True without one; the menu rows of
    `item_ids`). Both statements are sent before either answer is read: one round trip in
    pipeline mode, with the transaction's BEGIN. Reading the prices of a request that then
    replays is harmless."""
    claim = None
    if key is not None:
        claim = await send(
            conn,
            "INSERT INTO idempotency_keys (user_id, key, request_hash) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING RETURNING 1 AS claimed",
            (user_id, key, request_hash),
        )
    items = await send(
        conn, f"SELECT {ITEM_COLUMNS} FROM menu_items WHERE id = ANY(%s)", (item_ids,)
    )
    claimed = claim is None or await claim.fetchone() is not None
    return claimed, await items.fetchall()


async def idempotency_record(conn: Conn, user_id: UUID, key: str) -> Row | None:
    return await fetch_one(
        conn,
        "SELECT request_hash, response_status, response_body FROM idempotency_keys"
        " WHERE user_id = %s AND key = %s",
        (user_id, key),
    )


async def store_idempotent_response(
    conn: Conn, user_id: UUID, key: str, status: int, body: dict[str, Any]
) -> None:
    await execute(
        conn,
        "UPDATE idempotency_keys SET response_status = %s, response_body = %s"
        " WHERE user_id = %s AND key = %s",
        (status, json.dumps(body), user_id, key),
    )


async def purge_idempotency_keys(conn: Conn, older_than_hours: int) -> int:
    return await execute(
        conn,
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => %s)",
        (older_than_hours,),
    )
