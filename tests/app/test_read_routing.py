"""Lag-tolerant reads go to the streaming standby; a client that just wrote reads the primary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from . import servers as srv
from .conftest import Catalog, People, app_for, make_settings


@pytest.fixture(scope="module")
def routed(servers: srv.Servers, secret_file: Path) -> Iterator[TestClient]:
    settings = make_settings(
        servers,
        secret_file,
        replica_database_url=servers.standby.dsn(),
        read_your_writes_seconds=60,
    )
    with TestClient(app_for(settings)) as test_client:
        yield test_client


@pytest.fixture
def paused_standby(servers: srv.Servers) -> Iterator[None]:
    srv.wait_for_standby(servers.primary, servers.standby)
    with psycopg.connect(servers.standby.dsn("postgres"), autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
        try:
            yield
        finally:
            conn.execute("SELECT pg_wal_replay_resume()")
    srv.wait_for_standby(servers.primary, servers.standby)


def _names(client: TestClient, headers: dict[str, str]) -> set[str]:
    return {m["name"] for m in client.get("/menus", headers=headers).json()["items"]}


def test_reads_use_replica_but_writers_see_their_writes(
    routed: TestClient, people: People, catalog: Catalog, paused_standby: None
) -> None:
    r = routed.post("/menus", json={"name": "Only on primary"}, headers=people.staff.headers)
    assert r.status_code == 201
    menu_id = r.json()["id"]
    # The standby is paused, so anyone served by it cannot see the new menu yet...
    assert "Only on primary" not in _names(routed, {})
    assert "Only on primary" not in _names(routed, people.customer.headers)
    assert routed.get(f"/menus/{menu_id}").status_code == 404
    # ...while the writer reads from the primary.
    assert "Only on primary" in _names(routed, people.staff.headers)
    assert routed.get(f"/menus/{menu_id}", headers=people.staff.headers).status_code == 200
    # An invalid token gives no freshness; it is a public read.
    assert "Only on primary" not in _names(routed, {"Authorization": "Bearer junk"})


def test_order_reads_after_own_write(
    routed: TestClient, people: People, catalog: Catalog, paused_standby: None
) -> None:
    r = routed.post(
        "/orders",
        json={"items": [{"menu_item_id": catalog.items[0]["id"], "quantity": 1}]},
        headers=people.customer.headers,
    )
    assert r.status_code == 201
    order_id = r.json()["id"]
    assert routed.get(f"/orders/{order_id}", headers=people.customer.headers).status_code == 200
    mine = routed.get("/orders", headers=people.customer.headers).json()
    assert [o["id"] for o in mine["items"]] == [order_id]
    # Staff who did not write read the lagging standby.
    assert routed.get("/orders", headers=people.admin.headers).json()["items"] == []


def test_menu_item_cache_never_filled_from_lagging_replica(
    routed: TestClient, people: People, catalog: Catalog, paused_standby: None
) -> None:
    r = routed.post(
        "/menu-items",
        json={"menu_id": catalog.menu_id, "name": "Fresh", "price_minor": 1, "currency": "EUR"},
        headers=people.staff.headers,
    )
    assert r.status_code == 201
    names = {i["name"] for i in routed.get("/menu-items").json()["items"]}
    assert "Fresh" in names
