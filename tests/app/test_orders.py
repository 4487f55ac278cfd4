from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from zapora.settings import Settings

from .conftest import Catalog, People, relay_outbox


def _create(
    client: TestClient, person: Any, catalog: Catalog, key: str | None = None, qty: int = 2
) -> Any:
    headers = dict(person.headers)
    if key:
        headers["Idempotency-Key"] = key
    return client.post(
        "/orders",
        json={
            "items": [
                {"menu_item_id": catalog.items[0]["id"], "quantity": qty},
                {"menu_item_id": catalog.items[1]["id"], "quantity": 1},
            ],
            "notes": "no onions",
        },
        headers=headers,
    )


def test_order_priced_by_server(client: TestClient, people: People, catalog: Catalog) -> None:
    r = _create(client, people.customer, catalog)
    assert r.status_code == 201
    order = r.json()
    assert order["status"] == "pending"
    assert order["user_id"] == people.customer.id
    assert order["total_minor"] == 2 * 450 + 700
    assert order["currency"] == "EUR"
    assert order["version"] == 1
    assert order["items"][0] == {
        "menu_item_id": catalog.items[0]["id"],
        "name": "Soup",
        "quantity": 2,
        "unit_price_minor": 450,
    }
    assert set(order) == {
        "id",
        "user_id",
        "status",
        "items",
        "total_minor",
        "currency",
        "notes",
        "version",
        "created_at",
        "updated_at",
    }


def test_client_cannot_set_prices_or_status(
    client: TestClient, people: People, catalog: Catalog
) -> None:
    for extra in ({"total_minor": 1}, {"status": "delivered"}, {"user_id": people.other.id}):
        r = client.post(
            "/orders",
            json={"items": [{"menu_item_id": catalog.items[0]["id"], "quantity": 1}], **extra},
            headers=people.customer.headers,
        )
        assert r.status_code == 422, extra
    r = client.post(
        "/orders",
        json={
            "items": [
                {"menu_item_id": catalog.items[0]["id"], "quantity": 1, "unit_price_minor": 1}
            ]
        },
        headers=people.customer.headers,
    )
    assert r.status_code == 422


def test_unavailable_unknown_duplicate_items(
    client: TestClient, people: People, catalog: Catalog, db: psycopg.Connection[dict[str, Any]]
) -> None:
    h = people.customer.headers
    # Well-formed, but the catalogue says no: 409 (the document lists it).
    for items in (
        [{"menu_item_id": catalog.items[2]["id"], "quantity": 1}],
        [{"menu_item_id": str(uuid.uuid4()), "quantity": 1}],
    ):
        assert client.post("/orders", json={"items": items}, headers=h).status_code == 409
    assert client.post("/orders", json={"items": []}, headers=h).status_code == 422
    assert db.execute("SELECT count(*) AS n FROM orders").fetchone() == {"n": 0}
    # One item on two lines is what the schema allows: two lines, priced alike.
    two = [{"menu_item_id": catalog.items[0]["id"], "quantity": 50}] * 2
    r = client.post("/orders", json={"items": two}, headers=h)
    assert r.status_code == 201
    assert r.json()["total_minor"] == 100 * catalog.items[0]["price_minor"]


def test_mixed_currencies_refused(client: TestClient, people: People, catalog: Catalog) -> None:
    r = client.post(
        "/menu-items",
        json={"menu_id": catalog.menu_id, "name": "Import", "price_minor": 100, "currency": "USD"},
        headers=people.staff.headers,
    )
    r = client.post(
        "/orders",
        json={
            "items": [
                {"menu_item_id": catalog.items[0]["id"], "quantity": 1},
                {"menu_item_id": r.json()["id"], "quantity": 1},
            ]
        },
        headers=people.customer.headers,
    )
    assert r.status_code == 409


def test_idempotency_key_replays_first_response(
    client: TestClient, people: People, catalog: Catalog
) -> None:
    first = _create(client, people.customer, catalog, key="k-1")
    second = _create(client, people.customer, catalog, key="k-1")
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    other_body = _create(client, people.customer, catalog, key="k-1", qty=3)
    assert other_body.status_code == 409  # the key is bound to the first body
    # Keys belong to a user: another customer's same key is a new order.
    theirs = _create(client, people.other, catalog, key="k-1")
    assert theirs.status_code == 201
    assert theirs.json()["id"] != first.json()["id"]


def test_twenty_concurrent_posts_one_key_make_one_order(
    client: TestClient, people: People, catalog: Catalog, db: psycopg.Connection[dict[str, Any]]
) -> None:
    with ThreadPoolExecutor(20) as pool:
        responses = list(
            pool.map(lambda _: _create(client, people.customer, catalog, key="same"), range(20))
        )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert db.execute("SELECT count(*) AS n FROM orders").fetchone() == {"n": 1}


def test_visibility_and_listing(client: TestClient, people: People, catalog: Catalog) -> None:
    mine = _create(client, people.customer, catalog).json()
    theirs = _create(client, people.other, catalog).json()
    own = client.get("/orders", headers=people.customer.headers).json()
    assert [o["id"] for o in own["items"]] == [mine["id"]]
    assert client.get(f"/orders/{theirs['id']}", headers=people.customer.headers).status_code == 404
    assert client.get(f"/orders/{uuid.uuid4()}", headers=people.customer.headers).status_code == 404
    everything = client.get("/orders", headers=people.staff.headers).json()
    assert len(everything["items"]) == 2 and everything["next_cursor"] is None
    client.patch(
        f"/orders/{mine['id']}/status", json={"status": "confirmed"}, headers=people.staff.headers
    )
    confirmed = client.get("/orders", params={"status": "confirmed"}, headers=people.staff.headers)
    assert [o["id"] for o in confirmed.json()["items"]] == [mine["id"]]
    assert (
        client.get("/orders", params={"status": "bogus"}, headers=people.staff.headers).status_code
        == 422
    )


def test_status_state_machine(client: TestClient, people: People, catalog: Catalog) -> None:
    order = _create(client, people.customer, catalog).json()
    url = f"/orders/{order['id']}/status"
    h = people.staff.headers
    assert client.patch(url, json={"status": "ready"}, headers=h).status_code == 409
    version = order["version"]
    for status in ("confirmed", "preparing", "ready", "delivered"):
        r = client.patch(url, json={"status": status}, headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == status
        assert r.json()["version"] == version + 1
        version += 1
    assert client.patch(url, json={"status": "pending"}, headers=h).status_code == 409
    assert client.patch(url, json={"status": "cancelled"}, headers=h).status_code == 409
    assert client.post(f"/orders/{order['id']}/cancel", headers=h).status_code == 409
    assert (
        client.patch(
            f"/orders/{uuid.uuid4()}/status", json={"status": "confirmed"}, headers=h
        ).status_code
        == 404
    )


def test_cancel_rules(client: TestClient, people: People, catalog: Catalog) -> None:
    h = people.staff.headers
    o1 = _create(client, people.customer, catalog).json()
    client.patch(f"/orders/{o1['id']}/status", json={"status": "confirmed"}, headers=h)
    r = client.post(f"/orders/{o1['id']}/cancel", headers=people.customer.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert (
        client.post(f"/orders/{o1['id']}/cancel", headers=people.customer.headers).status_code
        == 409
    )

    o2 = _create(client, people.customer, catalog).json()
    for status in ("confirmed", "preparing"):
        client.patch(f"/orders/{o2['id']}/status", json={"status": status}, headers=h)
    assert (
        client.post(f"/orders/{o2['id']}/cancel", headers=people.customer.headers).status_code
        == 409
    )
    assert (
        client.post(f"/orders/{o2['id']}/cancel", headers=people.other.headers).status_code == 404
    )
    r = client.post(f"/orders/{o2['id']}/cancel", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.post(f"/orders/{uuid.uuid4()}/cancel", headers=h).status_code == 404


def test_status_changes_go_to_the_stream(
    client: TestClient, people: People, catalog: Catalog, rds: Any, settings: Settings
) -> None:
    order = _create(client, people.customer, catalog).json()
    client.patch(
        f"/orders/{order['id']}/status", json={"status": "confirmed"}, headers=people.staff.headers
    )
    # The events wait in the outbox (same transaction as the change) until the relay runs.
    assert rds.xlen("zapora:order-events") == 0
    assert asyncio.run(relay_outbox(settings)) >= 2  # with the catalogue's menu changes
    entries = rds.xrange("zapora:order-events")
    assert [e[1][b"status"] for e in entries] == [b"pending", b"confirmed"]
    assert all(e[1][b"order_id"] == order["id"].encode() for e in entries)


def test_staff_orders_are_audited_customer_orders_are_not(
    client: TestClient, people: People, catalog: Catalog
) -> None:
    _create(client, people.customer, catalog)
    staff_order = _create(client, people.staff, catalog).json()
    events = client.get(
        "/audit-events", params={"action": "order.created"}, headers=people.admin.headers
    ).json()
    assert len(events["items"]) == 1
    assert events["items"][0]["target_id"] == staff_order["id"]
    assert events["items"][0]["actor_id"] == people.staff.id


def test_get_order_checks_the_caller_in_its_one_query(
    client: TestClient, people: People, catalog: Catalog
) -> None:
    """GET /orders/{id} authenticates in the same statement as the order read: every check of
    the other routes still holds there, in the same order (401 before 404)."""
    mine = _create(client, people.customer, catalog).json()
    url = f"/orders/{mine['id']}"
    got = client.get(url, headers=people.customer.headers)
    assert got.status_code == 200
    same = ("id", "user_id", "status", "items", "total_minor", "currency", "notes", "version")
    assert {k: got.json()[k] for k in same} == {k: mine[k] for k in same}
    staff = client.get(url, headers=people.staff.headers)
    assert staff.status_code == 200 and staff.json()["id"] == mine["id"]
    assert client.get(url).status_code == 401
    bad = {"Authorization": "Bearer not.a.token"}
    assert client.get(url, headers=bad).status_code == 401
    assert client.get(f"/orders/{uuid.uuid4()}", headers=bad).status_code == 401
    # A deactivated caller is refused, for its own order and for a missing one alike.
    other = people.other
    theirs = _create(client, other, catalog).json()
    assert client.get(f"/orders/{theirs['id']}", headers=other.headers).status_code == 200
    deactivate = client.patch(
        f"/users/{other.id}", json={"is_active": False}, headers=people.admin.headers
    )
    assert deactivate.status_code == 200
    assert client.get(f"/orders/{theirs['id']}", headers=other.headers).status_code == 401
    assert client.get(f"/orders/{uuid.uuid4()}", headers=other.headers).status_code == 401
    # A revoked (logged out) token is refused at once.
    assert client.post("/auth/logout", headers=people.customer.headers).status_code == 204
    assert client.get(url, headers=people.customer.headers).status_code == 401
