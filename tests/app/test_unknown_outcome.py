"""A write whose outcome the API cannot know (its PostgreSQL connection is lost while the
order's statement or its commit runs) is answered 503 + Retry-After, problem+json, never 500;
the client's retry with the same Idempotency-Key then creates the order once, or returns the
one that committed. The backend is terminated from a second connection (pg_terminate_backend)
of the real server, at the moment named by pg_stat_activity."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from zapora.settings import Settings

from . import servers as srv
from .conftest import Catalog, People, app_for


def _post_order(client: TestClient, people: People, catalog: Catalog, key: str) -> Any:
    return client.post(
        "/orders",
        json={"items": [{"menu_item_id": catalog.items[0]["id"], "quantity": 2}]},
        headers={**people.customer.headers, "Idempotency-Key": key},
    )


def _terminated_while(
    db: psycopg.Connection[dict[str, Any]], wait_event: str, request: Callable[[], Any]
) -> Any:
    """Run `request` in a thread; once a backend inserting an order waits on `wait_event`,
    terminate it; the request's response."""
    answer: list[Any] = []
    thread = threading.Thread(target=lambda: answer.append(request()))
    thread.start()
    deadline = time.monotonic() + 15
    pid = None
    while pid is None:
        assert time.monotonic() < deadline, f"no order insert waited on {wait_event}"
        row = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event = %s AND query ILIKE %s",
            (wait_event, "%INSERT INTO orders%"),
        ).fetchone()
        pid = row["pid"] if row else None
        time.sleep(0.02)
    db.execute("SELECT pg_terminate_backend(%s)", (pid,))
    thread.join(15)
    assert answer, "the request did not answer within 15 s of its backend's end"
    return answer[0]


def _assert_unavailable(r: Any) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["status"] == 503


def _orders(db: psycopg.Connection[dict[str, Any]]) -> list[dict[str, Any]]:
    return db.execute("SELECT id, total_minor FROM orders").fetchall()


def test_lost_before_commit_is_503_and_the_retry_creates_the_order_once(
    client: TestClient,
    people: People,
    catalog: Catalog,
    servers: srv.Servers,
    db: psycopg.Connection[dict[str, Any]],
) -> None:
    with psycopg.connect(servers.primary.dsn()) as blocker:
        # The order's INSERT waits for this lock; its backend is terminated while it waits.
        blocker.execute("LOCK TABLE orders IN SHARE MODE")
        lost = _terminated_while(
            db, "relation", lambda: _post_order(client, people, catalog, "lost-early")
        )
        blocker.rollback()
    _assert_unavailable(lost)
    assert _orders(db) == []
    retry = _post_order(client, people, catalog, "lost-early")
    assert retry.status_code == 201, retry.text
    again = _post_order(client, people, catalog, "lost-early")
    assert again.status_code == 201 and again.json()["id"] == retry.json()["id"]
    assert [str(o["id"]) for o in _orders(db)] == [retry.json()["id"]]


def test_lost_after_commit_is_503_and_the_retry_returns_the_committed_order(
    settings: Settings,
    people: People,
    catalog: Catalog,
    servers: srv.Servers,
    db: psycopg.Connection[dict[str, Any]],
) -> None:
    # A synchronous standby that never connects: the commit is written locally and then
    # waits (SyncRep); terminated there, the client never hears that it committed. (The
    # test server runs with synchronous_commit off, for speed: on for this test.) A backend
    # applies a reload only between commands, so the API here starts after the change, on
    # connections that read it at their start.
    db.execute("ALTER SYSTEM SET synchronous_standby_names = 'zapora_test_absent_standby'")
    db.execute("ALTER SYSTEM SET synchronous_commit = 'on'")
    db.execute("SELECT pg_reload_conf()")
    try:
        srv.wait_until(lambda: _new_session_setting(servers) == "zapora_test_absent_standby")
        with TestClient(app_for(settings)) as client:
            lost = _terminated_while(
                db, "SyncRep", lambda: _post_order(client, people, catalog, "lost-late")
            )
    finally:
        db.execute("ALTER SYSTEM RESET synchronous_standby_names")
        db.execute("ALTER SYSTEM RESET synchronous_commit")
        db.execute("SELECT pg_reload_conf()")
        srv.wait_until(lambda: _new_session_setting(servers) == "")
    _assert_unavailable(lost)
    committed = _orders(db)
    assert len(committed) == 1
    with TestClient(app_for(settings)) as client:
        retry = _post_order(client, people, catalog, "lost-late")
    assert retry.status_code == 201, retry.text
    assert retry.json()["id"] == str(committed[0]["id"])
    assert retry.json()["total_minor"] == committed[0]["total_minor"]
    assert len(_orders(db)) == 1


def _new_session_setting(servers: srv.Servers) -> str:
    with psycopg.connect(servers.primary.dsn()) as conn:
        row = conn.execute("SHOW synchronous_standby_names").fetchone()
    return str(row[0]) if row else ""
