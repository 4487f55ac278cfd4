"""Hostile input: always a 4xx problem document, never a 500, and the database unchanged."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from fastapi.testclient import TestClient

from .conftest import Catalog, People

INJECTIONS = [
    "'; DROP TABLE users; --",
    '" OR 1=1 --',
    "1' OR '1'='1",
    "$(rm -rf /)",
    "<script>alert(1)</script>",
    "{{7*7}}",
    "%00",
    "\x00nul",
    "../../etc/passwd",
    "' UNION SELECT password_hash FROM users --",
    "\\",
    "é" * 3000,
]


def _counts(db: psycopg.Connection[dict[str, Any]]) -> dict[str, int]:
    out = {}
    for table in ("users", "menus", "menu_items", "orders", "audit_events"):
        row = db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()
        assert row is not None
        out[table] = row["n"]
    return out


def _problem(r: Any) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert r.headers["content-type"] == "application/problem+json"
        assert "Traceback" not in r.text


@pytest.mark.parametrize("payload", INJECTIONS, ids=range(len(INJECTIONS)))
def test_injection_strings_in_every_field(
    client: TestClient,
    people: People,
    catalog: Catalog,
    db: psycopg.Connection[dict[str, Any]],
    payload: str,
) -> None:
    h = people.staff.headers
    item_id = catalog.items[0]["id"]
    calls: list[tuple[str, str, dict[str, Any] | None, dict[str, str]]] = [
        ("POST", "/auth/register", {"email": payload, "password": "x" * 12, "full_name": "n"}, {}),
        ("POST", "/auth/login", {"email": payload, "password": payload}, {}),
        ("POST", "/auth/refresh", {"refresh_token": payload}, {}),
        ("POST", "/menus", {"name": payload, "description": payload}, h),
        ("PATCH", f"/menus/{catalog.menu_id}", {"name": payload}, h),
        (
            "POST",
            "/menu-items",
            {"menu_id": payload, "name": "x", "price_minor": 1, "currency": payload},
            h,
        ),
        ("PATCH", f"/menu-items/{item_id}", {"name": payload, "description": payload}, h),
        ("POST", "/orders", {"items": [{"menu_item_id": payload, "quantity": 1}]}, h),
        (
            "POST",
            "/orders",
            {"items": [{"menu_item_id": item_id, "quantity": 1}], "notes": payload},
            {**h, "Idempotency-Key": "k"},
        ),
        ("PATCH", f"/users/{people.customer.id}", {"role": payload}, people.admin.headers),
        ("PATCH", f"/orders/{quote(payload, safe='')}/status", {"status": payload}, h),
    ]
    for method, path, body, headers in calls:
        _problem(client.request(method, path, json=body, headers=headers))
    for path, params in (
        ("/menu-items", {"q": payload}),
        ("/menu-items", {"menu_id": payload}),
        ("/orders", {"status": payload}),
        ("/audit-events", {"action": payload, "actor_id": payload}),
        (f"/menus/{quote(payload, safe='')}", {}),
    ):
        _problem(client.get(path, params=params, headers=people.admin.headers))
    # The tables are intact and hold no more than what the valid writes created.
    assert db.execute("SELECT count(*) AS n FROM users").fetchone() == {"n": 4}
    roles = {r["role"] for r in db.execute("SELECT role FROM users")}
    assert roles == {"customer", "staff", "admin"}


def test_oversized_body_is_413(client: TestClient, people: People) -> None:
    big = {"name": "x" * 100_000}
    r = client.post("/menus", json=big, headers=people.staff.headers)
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"


def test_chunked_oversized_body_is_413(client: TestClient, people: People) -> None:
    def chunks() -> Any:
        for _ in range(100):
            yield b"x" * 1024

    r = client.post(
        "/menus",
        content=chunks(),
        headers={**people.staff.headers, "content-type": "application/json"},
    )
    assert r.status_code == 413


def test_deep_json(
    client: TestClient, people: People, db: psycopg.Connection[dict[str, Any]]
) -> None:
    before = _counts(db)
    for depth in (100, 5000, 30000):
        body = "[" * depth + "]" * depth
        r = client.post(
            "/orders",
            content=body,
            headers={**people.customer.headers, "content-type": "application/json"},
        )
        _problem(r)
        assert r.status_code in (400, 422)
        r = client.post("/auth/login", content=body, headers={"content-type": "application/json"})
        _problem(r)
    assert _counts(db) == before


def test_duplicate_keys_rejected(client: TestClient) -> None:
    body = (
        b'{"email": "a@example.com", "email": "b@example.com", "password": "x", "full_name": "y"}'
    )
    for path in ("/auth/register", "/auth/login"):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422


@pytest.mark.parametrize("quantity", [0, -1, 51, 1.5, "2", None, True, 10**30, [1]])
def test_bad_quantities(
    client: TestClient,
    people: People,
    catalog: Catalog,
    quantity: Any,
    db: psycopg.Connection[dict[str, Any]],
) -> None:
    r = client.post(
        "/orders",
        json={"items": [{"menu_item_id": catalog.items[0]["id"], "quantity": quantity}]},
        headers=people.customer.headers,
    )
    assert r.status_code == 422
    assert db.execute("SELECT count(*) AS n FROM orders").fetchone() == {"n": 0}


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": 10**30},
        {"offset": -1},
        {"offset": 10**30},
        {"limit": "ten"},
    ],
)
def test_bad_paging(client: TestClient, params: dict[str, Any]) -> None:
    for path in ("/menus", "/menu-items"):
        r = client.get(path, params=params)
        assert r.status_code == 422
        assert r.headers["content-type"] == "application/problem+json"


def test_not_json_and_wrong_types(client: TestClient, people: People) -> None:
    h = {**people.staff.headers, "content-type": "application/json"}
    for body in (b"{", b"null", b"[]", b'"x"', b"\xff\xfe", b'{"name": 1}'):
        r = client.post("/menus", content=body, headers=h)
        assert r.status_code == 422, body


def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    r = client.get("/nope")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    r = client.put("/menus")
    assert r.status_code == 405
    assert r.headers["content-type"] == "application/problem+json"


def test_too_many_order_lines(client: TestClient, people: People, catalog: Catalog) -> None:
    items = [{"menu_item_id": catalog.items[0]["id"], "quantity": 1}] * 51
    r = client.post("/orders", json={"items": items}, headers=people.customer.headers)
    assert r.status_code == 422


def test_bad_idempotency_key(client: TestClient, people: People, catalog: Catalog) -> None:
    r = client.post(
        "/orders",
        json={"items": [{"menu_item_id": catalog.items[0]["id"], "quantity": 1}]},
        headers={**people.customer.headers, "Idempotency-Key": "x" * 300},
    )
    assert r.status_code == 422
