"""A read whose connection is lost under it is run again on a fresh connection: the server
terminating the backend (`pg_terminate_backend`, as on a restart or failover) costs the client
nothing on GETs. A status change is not repeated (its outcome is unknown): 503 + Retry-After;
an order with an Idempotency-Key is (test_unknown_outcome.py)."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

import psycopg
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from zapora.api.problems import RETRY_AFTER_SECONDS

from .conftest import Catalog, People


def _order(client: TestClient, people: People, catalog: Catalog) -> str:
    r = client.post(
        "/orders",
        json={"items": [{"menu_item_id": catalog.items[0]["id"], "quantity": 1}]},
        headers=people.customer.headers,
    )
    assert r.status_code == 201, r.text
    order_id: str = r.json()["id"]
    return order_id


def _retries() -> float:
    return REGISTRY.get_sample_value("zapora_db_read_retries_total") or 0.0


def _kill_blocked(db: psycopg.Connection[dict[str, Any]], fragment: str) -> int:
    """Terminate the API's backend that waits on our lock while running `fragment`."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND pid <> pg_backend_pid() AND query LIKE %s",
            (f"%{fragment}%",),
        ).fetchone()
        if row:
            assert db.execute("SELECT pg_terminate_backend(%s) AS ok", (row["pid"],)).fetchone()
            return int(row["pid"])
        time.sleep(0.02)
    raise AssertionError(f"no API query waiting on the lock ({fragment})")


def _killed_mid_query(servers: Any, call: Callable[[], Any], release_first: bool) -> Any:
    """Run `call` while our own session holds `orders`, so the API's query blocks inside the
    server; terminate that backend mid-query. `release_first`: release the lock before
    waiting for the answer (a retry then goes through)."""
    dsn = servers.primary.dsn()
    with psycopg.connect(dsn, row_factory=psycopg.rows.dict_row) as locker:
        locker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(call)
            with psycopg.connect(dsn, autocommit=True, row_factory=psycopg.rows.dict_row) as killer:
                _kill_blocked(killer, "FROM orders WHERE id")
            if release_first:
                time.sleep(0.2)  # the API sees the error and retries; the retry waits too
                locker.commit()
            answer = pending.result(timeout=30)
        locker.commit()
    return answer


def test_get_survives_its_backend_killed_mid_query(
    client: TestClient, people: People, catalog: Catalog, servers: Any
) -> None:
    order_id = _order(client, people, catalog)
    before = _retries()
    r = _killed_mid_query(
        servers,
        lambda: client.get(f"/orders/{order_id}", headers=people.customer.headers),
        release_first=True,
    )
    assert r.status_code == 200, r.text
    assert r.json()["id"] == order_id
    assert _retries() == before + 1


def test_get_survives_every_pooled_backend_killed(
    client: TestClient, people: People, catalog: Catalog, db: psycopg.Connection[dict[str, Any]]
) -> None:
    order_id = _order(client, people, catalog)
    killed = db.execute(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend'"
    ).fetchone()
    assert killed and killed["n"] >= 1
    for _ in range(3):
        r = client.get(f"/orders/{order_id}", headers=people.customer.headers)
        assert r.status_code == 200, r.text


def test_write_is_not_repeated_when_its_backend_dies(
    client: TestClient,
    people: People,
    catalog: Catalog,
    servers: Any,
    db: psycopg.Connection[dict[str, Any]],
) -> None:
    order_id = _order(client, people, catalog)
    before = _retries()
    r = _killed_mid_query(
        servers,
        lambda: client.patch(
            f"/orders/{order_id}/status", json={"status": "confirmed"}, headers=people.staff.headers
        ),
        release_first=False,
    )
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    assert _retries() == before
    row = db.execute("SELECT status FROM orders WHERE id = %s", (order_id,)).fetchone()
    assert row == {"status": "pending"}
