"""Keyset pagination of the big lists (orders, audit events): every row exactly once in the
list's order, pages stable under inserts, a cursor that was not issued for this list refused
with 400, and the query served by the index in its order (no sort, no count)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from zapora.repositories import keyset

from .conftest import People

ORDER_KEYSET = "ORDER BY created_at DESC, id DESC"


def _insert_orders(
    db: psycopg.Connection[dict[str, Any]], user_id: str, n: int, status: str = "pending"
) -> None:
    # Three orders share each timestamp, so the id must break ties.
    db.execute(
        "INSERT INTO orders (user_id, status, total_minor, currency, created_at)"
        " SELECT %s, %s, 100, 'EUR', timestamptz '2026-11-01' + (g / 3) * interval '1 second'"
        " FROM generate_series(1, %s) AS g",
        (user_id, status, n),
    )


def _walk(
    client: TestClient, path: str, headers: dict[str, str], limit: int, **params: Any
) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(1000):
        query = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
        r = client.get(path, params=query, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"items", "limit", "next_cursor"}
        assert len(body["items"]) <= limit
        ids.extend(item["id"] for item in body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return ids
        assert len(body["items"]) == limit
    raise AssertionError("the list never ended")


def test_orders_walk_every_row_once_in_order(
    client: TestClient, people: People, db: psycopg.Connection[dict[str, Any]]
) -> None:
    _insert_orders(db, people.customer.id, 47)
    _insert_orders(db, people.other.id, 13, status="confirmed")
    expected = [str(r["id"]) for r in db.execute(f"SELECT id FROM orders {ORDER_KEYSET}")]
    assert _walk(client, "/orders", people.staff.headers, 10) == expected
    # A limit that divides the count exactly: the last full page has no next cursor or an
    # empty page after it, never an error.
    assert _walk(client, "/orders", people.staff.headers, 20) == expected
    own = [
        str(r["id"])
        for r in db.execute(
            f"SELECT id FROM orders WHERE user_id = %s {ORDER_KEYSET}", (people.customer.id,)
        )
    ]
    assert _walk(client, "/orders", people.customer.headers, 7) == own
    confirmed = [
        str(r["id"])
        for r in db.execute(f"SELECT id FROM orders WHERE status = 'confirmed' {ORDER_KEYSET}")
    ]
    assert _walk(client, "/orders", people.admin.headers, 5, status="confirmed") == confirmed


def test_pages_are_stable_while_rows_arrive(
    client: TestClient, people: People, db: psycopg.Connection[dict[str, Any]]
) -> None:
    _insert_orders(db, people.customer.id, 30)
    expected = [str(r["id"]) for r in db.execute(f"SELECT id FROM orders {ORDER_KEYSET}")]
    first = client.get("/orders", params={"limit": 10}, headers=people.staff.headers).json()
    # New orders arrive at the head of the list; with offsets they would shift the next page.
    _insert_orders(db, people.other.id, 5)
    db.execute("UPDATE orders SET created_at = now() WHERE user_id = %s", (people.other.id,))
    second = client.get(
        "/orders",
        params={"limit": 10, "cursor": first["next_cursor"]},
        headers=people.staff.headers,
    ).json()
    assert [o["id"] for o in first["items"] + second["items"]] == expected[:20]


def test_audit_events_walk_and_filters(
    client: TestClient, people: People, db: psycopg.Connection[dict[str, Any]]
) -> None:
    db.execute(
        "INSERT INTO audit_events (actor_id, action, occurred_at)"
        " SELECT %s, CASE WHEN g %% 2 = 0 THEN 'menu.created' ELSE 'menu.updated' END,"
        " timestamptz '2026-11-01' + (g / 4) * interval '1 second'"
        " FROM generate_series(1, 41) AS g",
        (people.staff.id,),
    )
    keyset = "ORDER BY occurred_at DESC, id DESC"
    expected = [str(r["id"]) for r in db.execute(f"SELECT id FROM audit_events {keyset}")]
    assert _walk(client, "/audit-events", people.admin.headers, 9) == expected
    created = [
        str(r["id"])
        for r in db.execute(
            f"SELECT id FROM audit_events WHERE action = 'menu.created' AND actor_id = %s {keyset}",
            (people.staff.id,),
        )
    ]
    assert len(created) == 20
    walked = _walk(
        client,
        "/audit-events",
        people.admin.headers,
        6,
        action="menu.created",
        actor_id=people.staff.id,
    )
    assert walked == created


def _cursor(client: TestClient, headers: dict[str, str], **params: Any) -> str:
    body = client.get("/orders", params={"limit": 2, **params}, headers=headers).json()
    cursor: str = body["next_cursor"]
    assert cursor
    return cursor


def _assert_bad_cursor(r: Any) -> None:
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["detail"].startswith("The cursor")


def test_cursor_not_issued_for_this_list_is_refused(
    client: TestClient, people: People, db: psycopg.Connection[dict[str, Any]]
) -> None:
    _insert_orders(db, people.customer.id, 6)
    staff = people.staff.headers
    cursor = _cursor(client, staff)
    flipped = cursor[:10] + ("a" if cursor[10] != "a" else "b") + cursor[11:]
    assert len(cursor) == 82
    forged = [
        flipped,  # altered position or signature
        cursor[:-32] + "0" * 32,  # position kept, signature replaced
        "f" * 82,  # pattern-valid
        "00" + cursor[2:],  # another version byte
    ]
    for bad in forged:
        _assert_bad_cursor(client.get("/orders", params={"cursor": bad}, headers=staff))
    # Issued for another filter or another caller's view: refused, not silently reinterpreted.
    _assert_bad_cursor(
        client.get("/orders", params={"cursor": cursor, "status": "pending"}, headers=staff)
    )
    _assert_bad_cursor(
        client.get("/orders", params={"cursor": cursor}, headers=people.customer.headers)
    )
    _assert_bad_cursor(
        client.get("/audit-events", params={"cursor": cursor}, headers=people.admin.headers)
    )
    # Outside the documented shape (82 lower-case hex digits): a schema violation, 422.
    outside = ("0", "a", "abcd", cursor[:-2], cursor + "00", cursor.upper(), "not a cursor")
    for bad in (*outside, "a" * 201, "ab+/=", "ab-cd"):
        r = client.get("/orders", params={"cursor": bad}, headers=staff)
        assert r.status_code == 422, (bad, r.status_code)
    # The genuine cursor still works.
    assert client.get("/orders", params={"cursor": cursor}, headers=staff).status_code == 200


def test_offset_is_bounded_and_applies_after_the_cursor(
    client: TestClient, people: People, db: psycopg.Connection[dict[str, Any]]
) -> None:
    _insert_orders(db, people.customer.id, 12)
    expected = [str(r["id"]) for r in db.execute(f"SELECT id FROM orders {ORDER_KEYSET}")]
    staff = people.staff.headers
    r = client.get("/orders", params={"limit": 3, "offset": 4}, headers=staff)
    assert [o["id"] for o in r.json()["items"]] == expected[4:7]
    cursor = r.json()["next_cursor"]
    r = client.get("/orders", params={"limit": 3, "offset": 2, "cursor": cursor}, headers=staff)
    assert [o["id"] for o in r.json()["items"]] == expected[9:12]
    assert r.json()["next_cursor"] is None
    assert client.get("/orders", params={"offset": 10_000}, headers=staff).status_code == 200
    assert client.get("/orders", params={"offset": 10_001}, headers=staff).status_code == 422


def test_openapi_documents_the_cursor_contract(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    for path in ("/orders", "/audit-events"):
        operation = doc["paths"][path]["get"]
        params = {p["name"]: p for p in operation["parameters"]}
        cursor = params["cursor"]["schema"]["anyOf"][0]
        # The issued cursors' exact shape: "0" and other strings the API refuses are invalid.
        assert cursor["pattern"] == "^[0-9a-f]{82}$"
        assert cursor["minLength"] == cursor["maxLength"] == 82
        assert params["offset"]["deprecated"] is True
        assert params["offset"]["schema"]["maximum"] == 10_000
        assert "400" in operation["responses"]
        ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        page = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert set(page["properties"]) == {"items", "limit", "next_cursor"}


@pytest.mark.parametrize(
    ("table", "filters", "index"),
    [
        ("orders", "", "orders_keyset_idx"),
        ("orders", "user_id = %(who)s AND", "orders_user_keyset_idx"),
        ("orders", "status = 'pending' AND", "orders_status_keyset_idx"),
        ("audit_events", "", "audit_events_keyset_idx"),
        ("audit_events", "actor_id = %(who)s AND", "audit_events_actor_keyset_idx"),
        ("audit_events", "action = 'x.y' AND", "audit_events_action_keyset_idx"),
    ],
)
def test_each_page_is_an_index_range_without_sort(
    db: psycopg.Connection[dict[str, Any]], table: str, filters: str, index: str
) -> None:
    at = "created_at" if table == "orders" else "occurred_at"
    # Realistic selectivity: each filter picks 2 % of 30,000 rows.
    who, filler = str(uuid.uuid4()), str(uuid.uuid4())
    for user in (who, filler):
        db.execute(
            "INSERT INTO users (id, email, password_hash, full_name) VALUES (%s, %s, 'x', 'Load')",
            (user, f"{user}@example.com"),
        )
    if table == "orders":
        db.execute(
            "INSERT INTO orders (user_id, status, total_minor, currency, created_at)"
            " SELECT CASE WHEN g %% 50 = 0 THEN %s::uuid ELSE %s::uuid END,"
            " CASE WHEN g %% 50 = 1 THEN 'pending' ELSE 'delivered' END, 1, 'EUR',"
            " now() - g * interval '1 second' FROM generate_series(1, 30000) AS g",
            (who, filler),
        )
    else:
        db.execute(
            "INSERT INTO audit_events (actor_id, action, occurred_at)"
            " SELECT CASE WHEN g %% 50 = 0 THEN %s::uuid END,"
            " CASE WHEN g %% 50 = 1 THEN 'x.y' ELSE 'a.b' END, now() - g * interval '1 second'"
            " FROM generate_series(1, 30000) AS g",
            (who,),
        )
    db.execute(f"ANALYZE {table}")
    sql = (
        f"EXPLAIN SELECT * FROM {table} WHERE {filters} ({at}, id) < (now(), %(id)s)"
        f" ORDER BY {at} DESC, id DESC LIMIT 21"
    )
    plan = "\n".join(
        row["QUERY PLAN"] for row in db.execute(sql, {"who": who, "id": str(uuid.uuid4())})
    )
    assert index in plan, plan
    assert "Sort" not in plan, plan


def test_repository_sql_is_the_keyset_order() -> None:
    # The plan test above checks the index against this order; keep the two together.
    where, params = keyset.clauses({"status": "ready", "user_id": None}, "created_at", None)
    assert where == f"WHERE status = %s {ORDER_KEYSET}" and params == ["ready"]
