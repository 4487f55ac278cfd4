from __future__ import annotations

from typing import Any

import psycopg
from fastapi.testclient import TestClient

from .conftest import PASSWORD, People, login, register


def test_register_returns_customer_without_hash(client: TestClient) -> None:
    r = client.post(
        "/auth/register",
        json={"email": "New@Example.com", "password": PASSWORD, "full_name": "New"},
    )
    assert r.status_code == 201
    body = r.json()
    assert body["role"] == "customer"
    assert body["is_active"] is True
    assert "password" not in r.text and "hash" not in r.text


def test_register_duplicate_email_is_409_case_insensitive(client: TestClient) -> None:
    register(client, "dup@example.com")
    r = client.post(
        "/auth/register",
        json={"email": "DUP@example.com", "password": PASSWORD, "full_name": "Again"},
    )
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"


def test_register_password_length_rules(client: TestClient) -> None:
    # The rules are the schema's: 10..72 characters, whatever their UTF-8 length.
    for password in ("short", "x" * 9, "x" * 73):
        r = client.post(
            "/auth/register",
            json={"email": "p@example.com", "password": password, "full_name": "P"},
        )
        assert r.status_code == 422, password
        assert r.json()["status"] == 422
    # 72 characters, 144 bytes: more than bcrypt reads, so it is pre-hashed; every byte counts.
    r = client.post(
        "/auth/register",
        json={"email": "p@example.com", "password": "é" * 72, "full_name": "P"},
    )
    assert r.status_code == 201
    ok = client.post("/auth/login", json={"email": "p@example.com", "password": "é" * 72})
    assert ok.status_code == 200
    near = client.post("/auth/login", json={"email": "p@example.com", "password": "é" * 71 + "e"})
    assert near.status_code == 401


def test_register_rejects_mass_assignment(client: TestClient) -> None:
    r = client.post(
        "/auth/register",
        json={"email": "m@example.com", "password": PASSWORD, "full_name": "M", "role": "admin"},
    )
    assert r.status_code == 422


def test_login_json_and_form(client: TestClient) -> None:
    register(client, "l@example.com")
    tokens = login(client, "l@example.com")
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] > 0
    r = client.post("/auth/login", data={"username": "l@example.com", "password": PASSWORD})
    assert r.status_code == 200
    me = client.get("/users/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"})
    assert me.status_code == 200
    assert me.json()["email"] == "l@example.com"


def test_login_failures_share_one_message(client: TestClient) -> None:
    register(client, "f@example.com")
    unknown = client.post("/auth/login", json={"email": "nobody@example.com", "password": "x"})
    wrong = client.post("/auth/login", json={"email": "f@example.com", "password": "wrong pass"})
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json()["detail"] == wrong.json()["detail"]


def test_login_bad_body_is_422(client: TestClient) -> None:
    assert (
        client.post(
            "/auth/login", content=b"{", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )
    assert client.post("/auth/login", json={"email": "a@b.c"}).status_code == 422
    assert (
        client.post("/auth/login", json={"email": "a@b.c", "password": "x", "x": 1}).status_code
        == 422
    )


def test_account_lockout_after_repeated_failures(
    client: TestClient, db: psycopg.Connection[dict[str, Any]]
) -> None:
    register(client, "lock@example.com")
    for _ in range(5):
        r = client.post("/auth/login", json={"email": "lock@example.com", "password": "bad guess!"})
        assert r.status_code == 401
    r = client.post("/auth/login", json={"email": "lock@example.com", "password": PASSWORD})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) > 0
    actions = [row["action"] for row in db.execute("SELECT action FROM audit_events")]
    assert actions.count("auth.login_failed") == 5
    assert "auth.lockout" in actions


def test_client_address_lockout(client: TestClient) -> None:
    for n in range(20):
        client.post("/auth/login", json={"email": f"u{n}@example.com", "password": "bad guess!"})
    register(client, "fresh@example.com")
    r = client.post("/auth/login", json={"email": "fresh@example.com", "password": PASSWORD})
    assert r.status_code == 429
    assert "retry-after" in r.headers


def test_deactivated_account_gets_403_and_tokens_stop(client: TestClient, people: People) -> None:
    r = client.patch(
        f"/users/{people.customer.id}", json={"is_active": False}, headers=people.admin.headers
    )
    assert r.status_code == 200
    assert client.get("/users/me", headers=people.customer.headers).status_code == 401
    r = client.post("/auth/login", json={"email": people.customer.email, "password": PASSWORD})
    assert r.status_code == 403
    r = client.post(
        "/auth/refresh", json={"refresh_token": people.customer.tokens["refresh_token"]}
    )
    assert r.status_code == 401


def test_refresh_rotates_and_reuse_revokes_family(
    client: TestClient, people: People, db: psycopg.Connection[dict[str, Any]]
) -> None:
    first = people.customer.tokens
    r = client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    # Presenting the rotated token again: reuse. The whole family dies.
    r = client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 401
    r = client.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert r.status_code == 401
    headers = {"Authorization": f"Bearer {second['access_token']}"}
    assert client.get("/users/me", headers=headers).status_code == 401
    actions = [row["action"] for row in db.execute("SELECT action FROM audit_events")]
    assert "auth.refresh_reuse" in actions


def test_refresh_rejects_access_token_and_garbage(client: TestClient, people: People) -> None:
    tokens = people.customer.tokens
    assert (
        client.post("/auth/refresh", json={"refresh_token": tokens["access_token"]}).status_code
        == 401
    )
    assert client.post("/auth/refresh", json={"refresh_token": "nope"}).status_code == 401


def test_logout_revokes_access_token_and_refresh_family(client: TestClient, people: People) -> None:
    person = people.customer
    assert client.post("/auth/logout", headers=person.headers).status_code == 204
    assert client.get("/users/me", headers=person.headers).status_code == 401
    r = client.post("/auth/refresh", json={"refresh_token": person.tokens["refresh_token"]})
    assert r.status_code == 401
    # Another session of the same user is unaffected.
    other = login(client, person.email)
    headers = {"Authorization": f"Bearer {other['access_token']}"}
    assert client.get("/users/me", headers=headers).status_code == 200
