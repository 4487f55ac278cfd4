"""The two hot order routes go through routing, dependencies and middleware like every route
(one implementation per route, issue 19): the checks come in the documented order
(docs/api.md, "Order of checks on `POST /orders`"), every refusal is the framework's answer,
and a revoked token is refused before it is counted against its user's write limit."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from zapora.settings import Settings

from . import servers as srv
from .conftest import Catalog, People, app_for, login, make_settings, register


def _order_body(catalog: Catalog, qty: int = 2) -> bytes:
    items = [
        f'{{"menu_item_id": "{catalog.items[0]["id"]}", "quantity": {qty}}}',
        f'{{"menu_item_id": "{catalog.items[1]["id"]}", "quantity": 1}}',
    ]
    return ('{"items": [' + ", ".join(items) + '], "notes": "extra napkins"}').encode()


def _post(client: TestClient, headers: dict[str, str], body: bytes) -> Any:
    return client.post(
        "/orders", content=body, headers={**headers, "Content-Type": "application/json"}
    )


def test_the_order_routes_are_routed(settings: Settings) -> None:
    """No middleware answers an order route before routing: only the cached list's copy
    (api/fast_path.py) sits in front of the router."""
    app = app_for(settings)
    names = [m.cls.__name__ for m in app.user_middleware]  # type: ignore[attr-defined]
    assert names == ["RequestContextMiddleware", "CachedMenuItems"]
    templates = {
        (route.path, tuple(sorted(route.methods)))
        for router in app.state.routers
        for route in router.routes
    }
    assert ("/orders", ("POST",)) in templates
    assert ("/orders/{order_id}", ("GET",)) in templates


def test_get_and_post_answer_the_order(
    client: TestClient, people: People, catalog: Catalog
) -> None:
    h = people.customer.headers
    created = _post(client, h, _order_body(catalog))
    assert created.status_code == 201
    assert created.headers["content-type"] == "application/json"
    order = created.json()
    assert order["total_minor"] == (
        2 * catalog.items[0]["price_minor"] + catalog.items[1]["price_minor"]
    )
    url = f"/orders/{order['id']}"
    shown = client.get(url, headers=h)
    assert shown.status_code == 200 and shown.json() == order
    # A path id in any case names the same order: the route's UUID parameter.
    assert client.get(url.upper().replace("/ORDERS/", "/orders/"), headers=h).json() == order
    assert client.get(url, headers=people.staff.headers).json() == order
    # Someone else's order and a missing one get the same 404.
    other = client.get(url, headers=people.other.headers)
    missing = client.get(f"/orders/{uuid.uuid4()}", headers=h)
    assert other.status_code == missing.status_code == 404
    assert other.json()["detail"] == missing.json()["detail"]
    for bad in ("Bearer not.a.token", "bearer  not.a.token ", "Basic abc", "Bearer", ""):
        r = client.get(url, headers={"Authorization": bad})
        assert r.status_code == 401, bad
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.headers["content-type"] == "application/problem+json"


def test_post_refusals_in_their_order(
    client: TestClient, people: People, catalog: Catalog, db: psycopg.Connection[dict[str, Any]]
) -> None:
    """401 before any look at the (readable) body, then 422 for a body or key the schema
    refuses; nothing is written."""
    h = people.customer.headers
    good = _order_body(catalog)
    for headers, body, status in (
        ({}, b'{"items": []}', 401),
        ({"Authorization": "Bearer not.a.token"}, b'{"items": []}', 401),
        (h, b'{"items": []}', 422),
        (h, b'{"items": [], "items": []}', 422),
        (h, b"", 422),
        (h, b"[" * 30000 + b"]" * 30000, 400),
        ({**h, "Idempotency-Key": "with space"}, good, 422),
        ({**h, "Idempotency-Key": "k" * 256}, good, 422),
    ):
        r = _post(client, headers, body)
        assert r.status_code == status, (headers, body[:40], r.text)
        assert r.headers["content-type"] == "application/problem+json"
    assert db.execute("SELECT count(*) AS n FROM orders").fetchone() == {"n": 0}


def test_deactivated_or_logged_out_caller_cannot_order(
    client: TestClient, people: People, catalog: Catalog, db: psycopg.Connection[dict[str, Any]]
) -> None:
    other = people.other
    r = client.patch(f"/users/{other.id}", json={"is_active": False}, headers=people.admin.headers)
    assert r.status_code == 200
    for body in (_order_body(catalog), b'{"items": []}'):
        r = _post(client, other.headers, body)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
    assert client.post("/auth/logout", headers=people.customer.headers).status_code == 204
    assert _post(client, people.customer.headers, _order_body(catalog)).status_code == 401
    assert client.get(f"/orders/{uuid.uuid4()}", headers=people.customer.headers).status_code == 401
    assert db.execute("SELECT count(*) AS n FROM orders").fetchone() == {"n": 0}
    assert db.execute(
        "SELECT count(*) AS n FROM outbox WHERE topic = 'order-event'"
    ).fetchone() == {"n": 0}


def test_a_revoked_token_is_not_counted_against_the_write_limit(
    servers: srv.Servers, secret_file: Path, catalog: Catalog
) -> None:
    """The drift issue 19 found in the removed fast path: it counted the per-user write limit
    before it checked revocation, so a logged-out token could hold its user at 429. A revoked
    token gets 401 however often it is sent, and its user's next session can still order."""
    settings = make_settings(servers, secret_file, user_write_limit_per_minute=3)
    with TestClient(app_for(settings)) as app_client:
        register(app_client, "limited@example.com")
        stale = {
            "Authorization": f"Bearer {login(app_client, 'limited@example.com')['access_token']}"
        }
        fresh = {
            "Authorization": f"Bearer {login(app_client, 'limited@example.com')['access_token']}"
        }
        assert app_client.post("/auth/logout", headers=stale).status_code == 204
        codes = [_post(app_client, stale, _order_body(catalog)).status_code for _ in range(6)]
        assert codes == [401] * 6
        assert _post(app_client, fresh, _order_body(catalog)).status_code == 201
