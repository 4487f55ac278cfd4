"""api/fast_orders answers the order routes' common case before routing: it must answer
exactly as the routed handlers do. A path id in upper case, or a Content-Type with a charset,
takes the routed handler, so each case is asked both ways and the answers compared."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from .conftest import Catalog, People

ROUTED_JSON = "application/json; charset=utf-8"


def _same(fast: Any, routed: Any) -> None:
    assert fast.status_code == routed.status_code
    assert fast.content == routed.content
    for name in ("content-type", "www-authenticate", "retry-after"):
        assert fast.headers.get(name) == routed.headers.get(name)


def _order_body(catalog: Catalog, qty: int = 2) -> bytes:
    items = [
        f'{{"menu_item_id": "{catalog.items[0]["id"]}", "quantity": {qty}}}',
        f'{{"menu_item_id": "{catalog.items[1]["id"]}", "quantity": 1}}',
    ]
    return ('{"items": [' + ", ".join(items) + '], "notes": "extra napkins"}').encode()


def _post(client: TestClient, headers: dict[str, str], body: bytes, routed: bool = False) -> Any:
    content_type = ROUTED_JSON if routed else "application/json"
    return client.post("/orders", content=body, headers={**headers, "Content-Type": content_type})


def test_get_answers_as_the_routed_handler(
    client: TestClient, people: People, catalog: Catalog
) -> None:
    h = people.customer.headers
    order = _post(client, h, _order_body(catalog)).json()
    url = f"/orders/{order['id']}"
    routed_url = url.upper().replace("/ORDERS/", "/orders/")
    got = client.get(url, headers=h)
    assert got.status_code == 200 and got.json()["id"] == order["id"]
    _same(got, client.get(routed_url, headers=h))
    # Staff see it; someone else and a missing order get the same 404; bad tokens 401.
    _same(
        client.get(url, headers=people.staff.headers),
        client.get(routed_url, headers=people.staff.headers),
    )
    _same(
        client.get(url, headers=people.other.headers),
        client.get(routed_url, headers=people.other.headers),
    )
    missing = f"/orders/{uuid.uuid4()}"
    _same(
        client.get(missing, headers=h),
        client.get(missing.upper().replace("/ORDERS/", "/orders/"), headers=h),
    )
    for bad in ("Bearer not.a.token", "bearer  not.a.token ", "Basic abc", "Bearer", ""):
        _same(
            client.get(url, headers={"Authorization": bad}),
            client.get(routed_url, headers={"Authorization": bad}),
        )
    assert client.get(url, headers={"Authorization": "Bearer not.a.token"}).status_code == 401


def test_post_answers_as_the_routed_handler(
    client: TestClient, people: People, catalog: Catalog, db: psycopg.Connection[dict[str, Any]]
) -> None:
    h = people.customer.headers
    fast = _post(client, h, _order_body(catalog))
    routed = _post(client, h, _order_body(catalog), routed=True)
    assert fast.status_code == routed.status_code == 201
    assert fast.headers["content-type"] == routed.headers["content-type"]
    a, b = fast.json(), routed.json()
    for key in ("user_id", "status", "items", "total_minor", "currency", "notes", "version"):
        assert a[key] == b[key]
    assert a["total_minor"] == 2 * catalog.items[0]["price_minor"] + catalog.items[1]["price_minor"]
    # The order as GET shows it, with the time the POST answered.
    shown = client.get(f"/orders/{a['id']}", headers=h).json()
    for key in ("id", "user_id", "status", "items", "total_minor", "currency", "notes", "version"):
        assert shown[key] == a[key]
    # A key first used on one path replays on the other, and refuses another body on both.
    keyed = {**h, "Idempotency-Key": "fast-1"}
    first = _post(client, keyed, _order_body(catalog))
    again = _post(client, keyed, _order_body(catalog), routed=True)
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    assert _post(client, keyed, _order_body(catalog)).json() == first.json()
    _same(
        _post(client, keyed, _order_body(catalog, qty=3)),
        _post(client, keyed, _order_body(catalog, qty=3), routed=True),
    )
    # Unknown and unavailable items: the same 409 both ways, and nothing written.
    count = db.execute("SELECT count(*) AS n FROM orders").fetchone()
    for item in (catalog.items[2]["id"], str(uuid.uuid4())):
        body = f'{{"items": [{{"menu_item_id": "{item}", "quantity": 1}}]}}'.encode()
        _same(_post(client, h, body), _post(client, h, body, routed=True))
        assert _post(client, h, body).status_code == 409
    assert db.execute("SELECT count(*) AS n FROM orders").fetchone() == count


def test_post_refusals_stay_the_frameworks(
    client: TestClient, people: People, catalog: Catalog, db: psycopg.Connection[dict[str, Any]]
) -> None:
    """What the fast path does not take gets the routed handler's answer: 401 before any look
    at the body, then 422 for a body or key the schema refuses."""
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
        fast = _post(client, headers, body)
        assert fast.status_code == status, (headers, body, fast.text)
        _same(fast, _post(client, headers, body, routed=True))
    assert db.execute("SELECT count(*) AS n FROM orders").fetchone() == {"n": 0}


def test_deactivated_or_logged_out_caller_cannot_order(
    client: TestClient, people: People, catalog: Catalog, db: psycopg.Connection[dict[str, Any]]
) -> None:
    """The caller's row is checked in the order's own statement: a deactivated user or a
    revoked token gets 401 and no order, on both paths, whatever the body."""
    other = people.other
    r = client.patch(f"/users/{other.id}", json={"is_active": False}, headers=people.admin.headers)
    assert r.status_code == 200
    for routed in (False, True):
        for body in (_order_body(catalog), b'{"items": []}'):
            r = _post(client, other.headers, body, routed=routed)
            assert r.status_code == 401, r.text
            assert r.headers["www-authenticate"] == "Bearer"
    assert client.post("/auth/logout", headers=people.customer.headers).status_code == 204
    for routed in (False, True):
        assert (
            _post(client, people.customer.headers, _order_body(catalog), routed).status_code == 401
        )
    assert db.execute("SELECT count(*) AS n FROM orders").fetchone() == {"n": 0}
    assert db.execute(
        "SELECT count(*) AS n FROM outbox WHERE topic = 'order-event'"
    ).fetchone() == {"n": 0}
