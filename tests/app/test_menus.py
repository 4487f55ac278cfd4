from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from zapora.settings import Settings

from .conftest import Catalog, People, app_for, make_settings, register


def test_menu_crud(client: TestClient, people: People) -> None:
    h = people.staff.headers
    r = client.post("/menus", json={"name": "Breakfast", "description": "Early"}, headers=h)
    assert r.status_code == 201
    menu = r.json()
    assert client.get(f"/menus/{menu['id']}").json()["name"] == "Breakfast"
    r = client.patch(f"/menus/{menu['id']}", json={"description": "Very early"}, headers=h)
    assert r.json()["description"] == "Very early"
    assert client.patch(f"/menus/{menu['id']}", json={}, headers=h).status_code == 200
    listing = client.get("/menus").json()
    assert listing["total"] == 1 and listing["limit"] == 20 and listing["offset"] == 0
    assert client.delete(f"/menus/{menu['id']}", headers=h).status_code == 204
    assert client.get(f"/menus/{menu['id']}").status_code == 404
    assert client.delete(f"/menus/{menu['id']}", headers=h).status_code == 404
    assert client.patch(f"/menus/{menu['id']}", json={"name": "x"}, headers=h).status_code == 404


def test_menu_item_shape_and_filters(client: TestClient, catalog: Catalog) -> None:
    r = client.get("/menu-items")
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == 3
    assert set(body["items"][0]) == {
        "id",
        "menu_id",
        "name",
        "description",
        "price_minor",
        "currency",
        "available",
    }
    assert client.get("/menu-items", params={"available": "true"}).json()["total"] == 2
    assert client.get("/menu-items", params={"q": "sal"}).json()["total"] == 1
    assert client.get("/menu-items", params={"q": "%"}).json()["total"] == 0
    assert client.get("/menu-items", params={"menu_id": catalog.menu_id}).json()["total"] == 3
    assert client.get("/menu-items", params={"menu_id": str(uuid.uuid4())}).json()["total"] == 0
    item = catalog.items[0]
    assert client.get(f"/menu-items/{item['id']}").json() == item
    assert client.get(f"/menu-items/{uuid.uuid4()}").status_code == 404


def test_menu_items_etag_and_cache_invalidation(
    client: TestClient, people: People, catalog: Catalog
) -> None:
    first = client.get("/menu-items")
    etag = first.headers["etag"]
    again = client.get("/menu-items", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    r = client.patch(
        f"/menu-items/{catalog.items[0]['id']}",
        json={"price_minor": 999},
        headers=people.staff.headers,
    )
    assert r.status_code == 200
    changed = client.get("/menu-items", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    prices = {i["id"]: i["price_minor"] for i in changed.json()["items"]}
    assert prices[catalog.items[0]["id"]] == 999


def test_cache_is_really_used(
    client: TestClient, catalog: Catalog, db: psycopg.Connection[dict[str, Any]]
) -> None:
    before = client.get("/menu-items").json()
    # A change behind the API's back is invisible while the cache holds the list...
    db.execute("UPDATE menu_items SET name = 'Changed'")
    assert client.get("/menu-items").json() == before


def test_menu_with_items_is_not_deleted(
    client: TestClient, people: People, catalog: Catalog
) -> None:
    h = people.admin.headers
    assert client.get("/menu-items").json()["total"] == 3
    # Items are never deleted behind a client's back: the menu must be emptied first.
    r = client.delete(f"/menus/{catalog.menu_id}", headers=h)
    assert r.status_code == 409
    assert client.get("/menu-items").json()["total"] == 3
    for item in catalog.items:
        assert client.delete(f"/menu-items/{item['id']}", headers=h).status_code == 204
    assert client.get("/menu-items").json()["total"] == 0
    assert client.delete(f"/menus/{catalog.menu_id}", headers=h).status_code == 204


def test_menu_item_validation(client: TestClient, people: People, catalog: Catalog) -> None:
    h = people.staff.headers
    base = {"menu_id": catalog.menu_id, "name": "Tea", "price_minor": 100, "currency": "EUR"}
    for bad in (
        {**base, "price_minor": -1},
        {**base, "price_minor": 1.5},
        {**base, "price_minor": "100"},
        {**base, "currency": "eur"},
        {**base, "name": ""},
        {**base, "id": str(uuid.uuid4())},
    ):
        assert client.post("/menu-items", json=bad, headers=h).status_code == 422, bad
    # A well-formed menu id naming no menu: the state, not the request, is wrong.
    r = client.post("/menu-items", json={**base, "menu_id": str(uuid.uuid4())}, headers=h)
    assert r.status_code == 409
    item_id = catalog.items[0]["id"]
    r = client.patch(f"/menu-items/{item_id}", json={"menu_id": str(uuid.uuid4())}, headers=h)
    assert r.status_code == 409
    assert client.patch(f"/menu-items/{item_id}", json={}, headers=h).status_code == 200
    missing = f"/menu-items/{uuid.uuid4()}"
    assert client.patch(missing, json={"name": "x"}, headers=h).status_code == 404
    assert client.delete(missing, headers=h).status_code == 404


def test_staff_writes_are_audited(client: TestClient, people: People, catalog: Catalog) -> None:
    r = client.get(
        "/audit-events", params={"actor_id": people.staff.id}, headers=people.admin.headers
    )
    actions = sorted({e["action"] for e in r.json()["items"]})
    assert actions == ["menu.created", "menu_item.created"]
    assert len(r.json()["items"]) == 4


def test_other_workers_drop_their_local_copy_on_write(
    client: TestClient, settings: Settings, people: People, catalog: Catalog
) -> None:
    item_id = catalog.items[0]["id"]
    with TestClient(app_for(settings)) as other_worker:
        deadline = time.monotonic() + 5
        # Both processes serve (and keep) the list once their subscription is up.
        while not other_worker.app.state.services.menus.local._listening:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        before = other_worker.get("/menu-items").json()
        assert other_worker.get("/menu-items").json() == before
        r = client.patch(
            f"/menu-items/{item_id}", json={"price_minor": 1234}, headers=people.staff.headers
        )
        assert r.status_code == 200
        # Pub/sub delivery takes well under a millisecond; the margin is for a loaded CI host.
        deadline = time.monotonic() + 5
        while True:
            prices = {
                i["id"]: i["price_minor"] for i in other_worker.get("/menu-items").json()["items"]
            }
            if prices[item_id] == 1234:
                break
            assert time.monotonic() < deadline, "the other worker kept a stale list"
            time.sleep(0.005)


def test_list_changed_outside_the_api_shows_within_the_bound(
    servers: Any, secret_file: Any, db: psycopg.Connection[dict[str, Any]]
) -> None:
    """docs/api.md: a change made behind the API's back (SQL fix, restore) shows in the
    cached list within 2 x ZAPORA_MENU_CACHE_TTL_SECONDS, under steady traffic."""
    ttl = 1
    settings = make_settings(servers, secret_file, menu_cache_ttl_seconds=ttl)
    with TestClient(app_for(settings)) as c:
        register(c, "sql@example.com")
        db.execute("INSERT INTO menus (name) VALUES ('Out of band')")
        menu = db.execute("SELECT id FROM menus").fetchone()
        assert menu is not None
        db.execute(
            "INSERT INTO menu_items (menu_id, name, price_minor, currency)"
            " VALUES (%s, 'Tea', 100, 'EUR')",
            (menu["id"],),
        )
        assert c.get("/menu-items").json()["items"][0]["price_minor"] == 100
        db.execute("UPDATE menu_items SET price_minor = 250")  # not through the API
        started = time.monotonic()
        while c.get("/menu-items").json()["items"][0]["price_minor"] != 250:
            assert time.monotonic() - started < 2 * ttl + 0.5, "stale beyond the bound"
            time.sleep(0.05)  # steady traffic: the list is read all the time
