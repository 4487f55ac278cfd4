"""SQL for orders, their lines and idempotency keys."""

from __future__ import annotations

import json
from datetime import datetime
from uuid import UUID

from zapora.infra.db import Conn, Row, execute, fetch_all, fetch_one
from zapora.repositories import keyset, tokens

_COLUMNS = "id, user_id, status, total_minor, currency, notes, version, created_at, updated_at"


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


# POST /orders in one statement, hence one round trip and one commit: the caller's row with
# its token's revocation state, an earlier use of the Idempotency-Key, the menu rows of the
# lines, and, only when the caller may order, the key is unused and every item is available
# in one currency: the order, its lines, its outbox event, the audit event of a staff order
# and the key's stored response. A concurrent request that claims the same key first makes
# this statement fail on the key's primary key, so none of its writes remain.
_CREATE = (
    "WITH caller AS ("
    + tokens.user_unless_revoked_sql()
    + "), existing AS (SELECT request_hash, response_status, response_body"
    " FROM idempotency_keys WHERE user_id = %(id)s AND key = %(key)s),"
    " wanted AS (SELECT w.line_no, w.menu_item_id, w.quantity, m.name, m.price_minor,"
    " m.currency, m.available FROM (SELECT (l.line->>0)::uuid AS menu_item_id,"
    " (l.line->>1)::int AS quantity, l.line_no FROM json_array_elements(%(lines)s::json)"
    " WITH ORDINALITY AS l(line, line_no)) w LEFT JOIN menu_items m ON m.id = w.menu_item_id),"
    " go AS (SELECT caller.role FROM caller WHERE caller.is_active AND NOT caller.revoked"
    " AND NOT EXISTS (SELECT 1 FROM existing)"
    " AND (SELECT bool_and(available IS TRUE) AND count(DISTINCT currency) = 1 FROM wanted)),"
    " new_order AS (INSERT INTO orders (user_id, total_minor, currency, notes)"
    " SELECT %(id)s::uuid, (SELECT sum(quantity * price_minor) FROM wanted),"
    " (SELECT min(currency) FROM wanted), %(notes)s FROM go"
    f" RETURNING {_COLUMNS}),"
    " new_lines AS (INSERT INTO order_items (order_id, line_no, menu_item_id, name, quantity,"
    " unit_price_minor) SELECT o.id, w.line_no, w.menu_item_id, w.name, w.quantity,"
    " w.price_minor FROM new_order o, wanted w),"
    " body AS (SELECT o.id, o.status, o.version, o.total_minor, rtrim(o.currency) AS currency,"
    " json_build_object('id', o.id, 'user_id', o.user_id, 'status', o.status, 'items',"
    " (SELECT json_agg(json_build_object('menu_item_id', w.menu_item_id, 'name', w.name,"
    " 'quantity', w.quantity, 'unit_price_minor', w.price_minor) ORDER BY w.line_no)"
    " FROM wanted w), 'total_minor', o.total_minor, 'currency', rtrim(o.currency),"
    " 'notes', o.notes, 'version', o.version, 'created_at', o.created_at,"
    " 'updated_at', o.updated_at) AS body FROM new_order o),"
    " event AS (INSERT INTO outbox (topic, aggregate_id, payload) SELECT %(topic)s,"
    " b.id::text, jsonb_build_object('event', 'order.created', 'order_id', b.id::text,"
    " 'status', b.status, 'version', b.version::text, 'occurred_at',"
    " to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"'))"
    " FROM body b),"
    " audit AS (INSERT INTO audit_events (actor_id, action, target_type, target_id,"
    " client_ip, request_id) SELECT %(id)s::uuid, 'order.created', 'order', b.id::text,"
    " %(client_ip)s::text, %(request_id)s::text FROM body b, go"
    " WHERE go.role IN ('staff', 'admin')),"
    " claim AS (INSERT INTO idempotency_keys (user_id, key, request_hash, response_status,"
    " response_body) SELECT %(id)s::uuid, %(key)s, %(hash)s, 201, b.body::jsonb FROM body b"
    " WHERE %(key)s::text IS NOT NULL)"
    " SELECT (SELECT role FROM caller WHERE is_active AND NOT revoked) AS role,"
    " (SELECT row_to_json(existing) FROM existing) AS existing,"
    " (SELECT json_agg(json_build_object('line_no', line_no, 'currency', currency,"
    " 'available', available) ORDER BY line_no) FROM wanted) AS lines,"
    " (SELECT body FROM body) AS body, (SELECT total_minor FROM body) AS total_minor,"
    " (SELECT currency FROM body) AS currency"
)


async def create(
    conn: Conn,
    user_id: str,
    jti: str,
    family: str | None,
    key: str | None,
    request_hash: str,
    items: list[tuple[UUID, int]],
    notes: str | None,
    topic: str,
    client_ip: str | None,
    request_id: str | None,
) -> Row:
    """Run _CREATE (autocommit: the statement is its own transaction). Its row: `role` (NULL
    when the caller may not act), `existing` (the key's earlier use), `lines` (line_no,
    currency, available, in line order), and when the order was made `body`, `total_minor`
    and `currency`. Raises psycopg.errors.UniqueViolation when a concurrent request
    claimed the key first."""
    row = await fetch_one(
        conn,
        _CREATE,
        {
            "id": user_id,
            "jti": jti,
            "family": family or "",
            "key": key,
            "hash": request_hash,
            # One text parameter rather than two arrays: cheaper for the client to send.
            "lines": json.dumps([[str(item_id), quantity] for item_id, quantity in items]),
            "notes": notes,
            "topic": topic,
            "client_ip": client_ip,
            "request_id": request_id,
        },
    )
    assert row is not None
    return row


async def idempotency_record(conn: Conn, user_id: UUID, key: str) -> Row | None:
    return await fetch_one(
        conn,
        "SELECT request_hash, response_status, response_body FROM idempotency_keys"
        " WHERE user_id = %s AND key = %s",
        (user_id, key),
    )


async def purge_idempotency_keys(conn: Conn, older_than_hours: int) -> int:
    return await execute(
        conn,
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => %s)",
        (older_than_hours,),
    )
