"""The role x endpoint matrix: who may call what, and what the others get."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from .conftest import Catalog, People

ROLES = ("anonymous", "customer", "other", "staff", "admin")


def _headers(people: People, role: str) -> dict[str, str]:
    return {} if role == "anonymous" else getattr(people, role).headers


def _order(client: TestClient, people: People, catalog: Catalog) -> dict[str, Any]:
    r = client.post(
        "/orders",
        json={"items": [{"menu_item_id": catalog.items[0]["id"], "quantity": 1}]},
        headers=people.customer.headers,
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


# (method, path template, body, expected status per role)
MATRIX: list[tuple[str, str, Any, dict[str, int]]] = [
    (
        "GET",
        "/users/me",
        None,
        {"anonymous": 401, "customer": 200, "other": 200, "staff": 200, "admin": 200},
    ),
    (
        "GET",
        "/users",
        None,
        {"anonymous": 401, "customer": 403, "other": 403, "staff": 403, "admin": 200},
    ),
    (
        "PATCH",
        "/users/{customer_id}",
        {"is_active": True},
        {"anonymous": 401, "customer": 403, "other": 403, "staff": 403, "admin": 200},
    ),
    (
        "GET",
        "/menus",
        None,
        {"anonymous": 200, "customer": 200, "other": 200, "staff": 200, "admin": 200},
    ),
    (
        "GET",
        "/menus/{menu_id}",
        None,
        {"anonymous": 200, "customer": 200, "other": 200, "staff": 200, "admin": 200},
    ),
    (
        "POST",
        "/menus",
        {"name": "Dinner"},
        {"anonymous": 401, "customer": 403, "other": 403, "staff": 201, "admin": 201},
    ),
    (
        "PATCH",
        "/menus/{menu_id}",
        {"name": "Lunch 2"},
        {"anonymous": 401, "customer": 403, "other": 403, "staff": 200, "admin": 200},
    ),
    (
        "DELETE",
        "/menus/{empty_menu_id}",
        None,
        {"anonymous": 401, "customer": 403, "other": 403, "staff": 204, "admin": 204},
    ),
    (
        "GET",
        "/menu-items",
        None,
        {"anonymous": 200, "customer": 200, "other": 200, "staff": 200, "admin": 200},
    ),
    (
        "GET",
        "/menu-items/{item_id}",
        None,
        {"anonymous": 200, "customer": 200, "other": 200, "staff": 200, "admin": 200},
    ),
    (
        "POST",
        "/menu-items",
        {"menu_id": "{menu_id}", "name": "Tea", "price_minor": 150, "currency": "EUR"},
        {"anonymous": 401, "customer": 403, "other": 403, "staff": 201, "admin": 201},
    ),
    (
        "PATCH",
        "/menu-items/{item_id}",
        {"price_minor": 500},
        {"anonymous": 401, "customer": 403, "other": 403, "staff": 200, "admin": 200},
    ),
    (
        "DELETE",
        "/menu-items/{item_id}",
        None,
        {"anonymous": 401, "customer": 403, "other": 403, "staff": 204, "admin": 204},
    ),
    (
        "POST",
        "/orders",
        {"items": [{"menu_item_id": "{item_id}", "quantity": 2}]},
        {"anonymous": 401, "customer": 201, "other": 201, "staff": 201, "admin": 201},
    ),
    (
        "GET",
        "/orders",
        None,
        {"anonymous": 401, "customer": 200, "other": 200, "staff": 200, "admin": 200},
    ),
    (
        "GET",
        "/orders/{order_id}",
        None,
        {"anonymous": 401, "customer": 200, "other": 404, "staff": 200, "admin": 200},
    ),
    (
        "PATCH",
        "/orders/{order_id}/status",
        {"status": "confirmed"},
        {"anonymous": 401, "customer": 403, "other": 403, "staff": 200, "admin": 200},
    ),
    (
        "POST",
        "/orders/{order_id}/cancel",
        None,
        {"anonymous": 401, "customer": 200, "other": 404, "staff": 200, "admin": 200},
    ),
    (
        "GET",
        "/audit-events",
        None,
        {"anonymous": 401, "customer": 403, "other": 403, "staff": 403, "admin": 200},
    ),
]


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("method", "path", "body", "expected"), MATRIX, ids=[f"{m} {p}" for m, p, _, _ in MATRIX]
)
def test_permission_matrix(
    client: TestClient,
    people: People,
    catalog: Catalog,
    role: str,
    method: str,
    path: str,
    body: Any,
    expected: dict[str, int],
) -> None:
    order = _order(client, people, catalog)
    ids = {
        "customer_id": people.customer.id,
        "menu_id": catalog.menu_id,
        "item_id": catalog.items[0]["id"],
        "order_id": order["id"],
        # A menu with items cannot be deleted (409); deletion rights are tested on an empty one.
        "empty_menu_id": client.post(
            "/menus", json={"name": "Empty"}, headers=people.staff.headers
        ).json()["id"],
    }
    r = client.request(
        method, _fill(path, ids), json=_fill(body, ids), headers=_headers(people, role)
    )
    assert r.status_code == expected[role], r.text
    if r.status_code >= 400:
        assert r.headers["content-type"] == "application/problem+json"


def test_permission_denial_is_audited(client: TestClient, people: People) -> None:
    assert client.get("/audit-events", headers=people.staff.headers).status_code == 403
    r = client.get(
        "/audit-events",
        params={"action": "permission.denied", "actor_id": people.staff.id},
        headers=people.admin.headers,
    )
    assert r.status_code == 200
    assert len(r.json()["items"]) == 1


def test_nobody_changes_their_own_role(client: TestClient, people: People) -> None:
    r = client.patch(
        f"/users/{people.admin.id}", json={"role": "customer"}, headers=people.admin.headers
    )
    assert r.status_code == 403


def test_admin_changes_role_and_it_applies_at_once(client: TestClient, people: People) -> None:
    assert (
        client.post("/menus", json={"name": "X"}, headers=people.customer.headers).status_code
        == 403
    )
    r = client.patch(
        f"/users/{people.customer.id}", json={"role": "staff"}, headers=people.admin.headers
    )
    assert r.status_code == 200
    assert r.json()["role"] == "staff"
    assert (
        client.post("/menus", json={"name": "X"}, headers=people.customer.headers).status_code
        == 201
    )
    audit = client.get(
        "/audit-events", params={"action": "user.role_changed"}, headers=people.admin.headers
    ).json()
    assert len(audit["items"]) == 1
    assert audit["items"][0]["details"] == {"from": "customer", "to": "staff"}


def test_patch_unknown_user_is_404(client: TestClient, people: People) -> None:
    r = client.patch(
        f"/users/{uuid.uuid4()}", json={"is_active": False}, headers=people.admin.headers
    )
    assert r.status_code == 404


def test_user_list_pages(client: TestClient, people: People) -> None:
    r = client.get("/users", params={"limit": 2, "offset": 1}, headers=people.admin.headers)
    body = r.json()
    assert body["total"] == 4 and body["limit"] == 2 and body["offset"] == 1
    assert len(body["items"]) == 2
    assert all("password_hash" not in item for item in body["items"])
