"""Fixtures for the API tests: real servers once per session, a clean slate before each test."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg.rows import dict_row

from zapora.api.app import create_app
from zapora.migrate import upgrade
from zapora.services.context import Infra
from zapora.services.outbox import OutboxRelay
from zapora.settings import Settings

from . import servers as srv

PASSWORD = "correct horse battery"
TABLES = (
    "users, menus, menu_items, orders, order_items, idempotency_keys, audit_events, order_events,"
    " outbox, revoked_tokens, revoked_token_families, used_refresh_tokens"
)


@pytest.fixture(scope="session")
def servers() -> Iterator[srv.Servers]:
    with srv.started() as running:
        upgrade(running.primary.dsn())
        yield running


@pytest.fixture(scope="session")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "jwt"
    path.write_text(secrets.token_hex(32))
    return path


def make_settings(servers: srv.Servers, secret_file: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": servers.primary.dsn(),
        "redis_url": servers.redis_url,
        "jwt_secret_file": secret_file,
        "bcrypt_rounds": 4,
        "db_pool_max": 30,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture(scope="session")
def settings(servers: srv.Servers, secret_file: Path) -> Settings:
    return make_settings(servers, secret_file)


# Every app a test starts, so that the per-test reset also empties their in-process caches.
_APPS: list[FastAPI] = []


def app_for(settings: Settings) -> FastAPI:
    app = create_app(settings)
    _APPS.append(app)
    return app


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(app_for(settings)) as test_client:
        yield test_client


@pytest.fixture
def db(servers: srv.Servers) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(servers.primary.dsn(), autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture
def rds(servers: srv.Servers) -> Iterator[redis.Redis]:
    client = redis.Redis(port=servers.redis_port)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def clean_state(servers: srv.Servers) -> None:
    """Every test starts from empty tables and an empty Redis."""
    with psycopg.connect(servers.primary.dsn(), autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES} CASCADE")
    redis.Redis(port=servers.redis_port).flushall()
    # The tables were emptied behind the API's back, so no write announced it: drop what the
    # running apps keep in memory as well.
    for app in _APPS:
        services = getattr(app.state, "services", None)
        if services is not None:
            services.menus.local.invalidate_locally()


@dataclass
class Person:
    id: str
    email: str
    role: str
    tokens: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens['access_token']}"}


def register(client: TestClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    r = client.post(
        "/auth/register", json={"email": email, "password": password, "full_name": "Test"}
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def login(client: TestClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    r = client.post("/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def make_person(
    client: TestClient, db: psycopg.Connection[dict[str, Any]], name: str, role: str
) -> Person:
    email = f"{name}@example.com"
    user = register(client, email)
    if role != "customer":
        db.execute("UPDATE users SET role = %s WHERE id = %s", (role, user["id"]))
    return Person(user["id"], email, role, login(client, email))


@dataclass
class People:
    customer: Person
    other: Person
    staff: Person
    admin: Person


@pytest.fixture
def people(client: TestClient, db: psycopg.Connection[dict[str, Any]]) -> People:
    return People(
        customer=make_person(client, db, "carol", "customer"),
        other=make_person(client, db, "oscar", "customer"),
        staff=make_person(client, db, "sam", "staff"),
        admin=make_person(client, db, "ada", "admin"),
    )


@dataclass
class Catalog:
    menu_id: str
    items: list[dict[str, Any]]


@pytest.fixture
def catalog(client: TestClient, people: People) -> Catalog:
    r = client.post("/menus", json={"name": "Lunch"}, headers=people.staff.headers)
    assert r.status_code == 201, r.text
    menu_id = r.json()["id"]
    items = []
    for name, price, available in (("Soup", 450, True), ("Salad", 700, True), ("Pie", 900, False)):
        r = client.post(
            "/menu-items",
            json={
                "menu_id": menu_id,
                "name": name,
                "description": f"{name} of the day",
                "price_minor": price,
                "currency": "EUR",
                "available": available,
            },
            headers=people.staff.headers,
        )
        assert r.status_code == 201, r.text
        items.append(r.json())
    return Catalog(menu_id, items)


async def relay_outbox(settings: Settings) -> int:
    """One outbox relay pass, as the worker makes it."""
    infra = Infra.from_settings(settings)
    await infra.open()
    try:
        return await OutboxRelay(infra).relay_once()
    finally:
        await infra.close()


def python() -> str:
    return sys.executable
