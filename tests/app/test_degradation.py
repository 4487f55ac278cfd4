"""Degrade, don't fall over: with Redis stopped mid-run the API keeps serving reads, orders
and sign-ins from PostgreSQL, throttles failed logins in-process and answers problem+json;
revocations survive a Redis restart that lost everything; the outbox delivers what was
committed meanwhile. With the replica stopped, reads fall back to the primary and readiness
reports the replica without failing. Every server here is real."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from . import servers as srv
from .conftest import PASSWORD, app_for, login, make_settings, register, relay_outbox


class OwnRedis:
    """A Redis only this test uses, so stopping it disturbs no other test."""

    def __init__(self, directory: Path) -> None:
        self.port = srv.free_port()
        self.directory = directory
        self.proc = srv.start_redis(self.port, directory)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def start(self) -> None:
        self.proc = srv.start_redis(self.port, self.directory)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    own = OwnRedis(tmp_path)
    yield own
    if own.proc.poll() is None:
        own.stop()


def _is_problem(r: Any) -> bool:
    return bool(r.headers.get("content-type") == "application/problem+json")


def test_redis_stopped_mid_run(
    servers: srv.Servers,
    secret_file: Path,
    own_redis: OwnRedis,
    db: psycopg.Connection[dict[str, Any]],
) -> None:
    settings = make_settings(
        servers, secret_file, redis_url=own_redis.url, login_max_failures_per_account=3
    )
    with TestClient(app_for(settings)) as client:
        register(client, "cook@example.com")
        db.execute("UPDATE users SET role = 'staff' WHERE email = 'cook@example.com'")
        staff = {"Authorization": f"Bearer {login(client, 'cook@example.com')['access_token']}"}
        register(client, "eve@example.com")
        tokens = login(client, "eve@example.com")
        eve = {"Authorization": f"Bearer {tokens['access_token']}"}
        menu = client.post("/menus", json={"name": "Night"}, headers=staff).json()
        item = client.post(
            "/menu-items",
            json={"menu_id": menu["id"], "name": "Ramen", "price_minor": 1200, "currency": "EUR"},
            headers=staff,
        ).json()
        assert client.get("/menu-items").status_code == 200  # cached while Redis is up
        asyncio.run(relay_outbox(settings))  # the setup's own rows go out while Redis is up

        own_redis.stop()
        statuses: list[int] = []

        def call(method: str, path: str, **kwargs: Any) -> Any:
            r = client.request(method, path, **kwargs)
            statuses.append(r.status_code)
            return r

        # Public list: served from PostgreSQL, uncached.
        r = call("GET", "/menu-items")
        assert r.status_code == 200
        assert [i["name"] for i in r.json()["items"]] == ["Ramen"]
        # Authenticated reads and orders keep working.
        assert call("GET", "/users/me", headers=eve).status_code == 200
        order = call(
            "POST",
            "/orders",
            json={"items": [{"menu_item_id": item["id"], "quantity": 2}]},
            headers=eve,
        )
        assert order.status_code == 201
        assert call("GET", f"/orders/{order.json()['id']}", headers=eve).status_code == 200
        # A menu change commits; its cache invalidation waits in the outbox.
        r = call("PATCH", f"/menu-items/{item['id']}", json={"price_minor": 1300}, headers=staff)
        assert r.status_code == 200
        topics = [row["topic"] for row in db.execute("SELECT topic FROM outbox ORDER BY id")]
        assert topics == ["order-event", "menu-changed"]
        # Throttling holds without Redis: counted in this process.
        for _ in range(3):
            bad = call("POST", "/auth/login", json={"email": "eve@example.com", "password": "x"})
            assert bad.status_code == 401
        locked = call("POST", "/auth/login", json={"email": "eve@example.com", "password": "x"})
        assert locked.status_code == 429 and int(locked.headers["Retry-After"]) >= 1
        assert _is_problem(locked)
        # Readiness names Redis; the answer is problem+json, not a dropped connection.
        ready = call("GET", "/health/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"] == "failed"
        assert _is_problem(ready)
        # Logout works and is durable.
        assert call("POST", "/auth/logout", headers=eve).status_code == 204
        assert call("GET", "/users/me", headers=eve).status_code == 401
        assert 500 not in statuses

        # Redis comes back empty (it kept nothing): revocations still hold.
        own_redis.start()
        assert client.get("/users/me", headers=eve).status_code == 401
        r = client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert r.status_code == 401
        # The relay delivers what was committed while Redis was away, in order.
        assert asyncio.run(relay_outbox(settings)) == 2
        events = redis.Redis(port=own_redis.port).xrange(settings.order_stream)
        assert [e[1][b"order_id"].decode() for e in events] == [order.json()["id"]]
        assert db.execute("SELECT count(*) AS n FROM outbox").fetchone() == {"n": 0}
        r = client.get("/menu-items")
        assert r.json()["items"][0]["price_minor"] == 1300
        # Good credentials after the lockout window are not affected by other accounts.
        assert login(client, "cook@example.com", PASSWORD)


def test_replica_stopped_reads_fall_back(
    servers: srv.Servers, secret_file: Path, client: TestClient
) -> None:
    settings = make_settings(servers, secret_file, replica_database_url=servers.standby.dsn())
    with TestClient(app_for(settings)) as app_client:
        assert app_client.get("/menus").status_code == 200
        ready = app_client.get("/health/ready").json()
        assert ready["checks"]["replica"] == "ok"
        servers.standby.stop()
        try:
            for _ in range(5):
                assert app_client.get("/menus").status_code == 200
            ready = app_client.get("/health/ready")
            assert ready.status_code == 200
            assert ready.json()["checks"]["replica"] == "failed"
        finally:
            servers.standby.start()
        srv.wait_for_standby(servers.primary, servers.standby)


def test_database_unreachable_is_503_with_retry_after(
    servers: srv.Servers, secret_file: Path
) -> None:
    settings = make_settings(
        servers,
        secret_file,
        database_url=f"postgresql://postgres@127.0.0.1:{srv.free_port()}/zapora?connect_timeout=1",
        db_pool_min=0,
        db_pool_timeout_seconds=1,
    )
    with TestClient(app_for(settings)) as broken:
        for path in ("/menus", "/menu-items", f"/menus/{'0' * 8}-0000-0000-0000-{'0' * 12}"):
            r = broken.get(path)
            assert r.status_code == 503, path
            assert _is_problem(r)
            assert int(r.headers["Retry-After"]) >= 1


def test_primary_restart_fails_no_request(
    servers: srv.Servers, secret_file: Path, client: TestClient
) -> None:
    """Pooled connections the server terminated (restart, switchover) are discarded at
    checkout, without a round trip, instead of each failing one request."""
    settings = make_settings(servers, secret_file, db_pool_min=4, db_pool_max=4)
    with TestClient(app_for(settings)) as app_client:
        for _ in range(8):
            assert app_client.get("/menus").status_code == 200
        servers.primary.stop()
        servers.primary.start()
        statuses = [app_client.get("/menus").status_code for _ in range(12)]
        assert statuses == [200] * 12
    srv.wait_for_standby(servers.primary, servers.standby, timeout=30)


def test_per_user_write_limit(
    servers: srv.Servers, secret_file: Path, db: psycopg.Connection[dict[str, Any]]
) -> None:
    settings = make_settings(servers, secret_file, user_write_limit_per_minute=3)
    with TestClient(app_for(settings)) as app_client:
        register(app_client, "chef@example.com")
        db.execute("UPDATE users SET role = 'staff' WHERE email = 'chef@example.com'")
        h = {"Authorization": f"Bearer {login(app_client, 'chef@example.com')['access_token']}"}
        codes = [
            app_client.post("/menus", json={"name": f"M{i}"}, headers=h).status_code
            for i in range(4)
        ]
        if codes[-1] == 201:  # the minute turned over between the writes: one more try
            codes.append(app_client.post("/menus", json={"name": "M"}, headers=h).status_code)
        assert codes[:3] == [201, 201, 201] and 429 in codes[3:]
        r = app_client.post("/menus", json={"name": "late"}, headers=h)
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
        assert app_client.get("/menus").status_code == 200  # reads are not limited
