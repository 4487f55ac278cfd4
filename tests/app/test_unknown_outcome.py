"""An order whose PostgreSQL connection is lost while its statement or its commit runs (a
switchover's old primary terminates its backends): with an Idempotency-Key the API runs the
statement once more on a fresh connection and answers 201, creating the order once or
returning the one that committed; without a key the outcome is unknown and the answer is 503
+ Retry-After, problem+json, never 500. The backend is terminated from a second connection
(pg_terminate_backend) of the real server, at the moment named by pg_stat_activity."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from zapora.api.problems import RETRY_AFTER_SECONDS
from zapora.settings import Settings

from . import servers as srv
from .conftest import Catalog, People, app_for, make_settings

DB = psycopg.Connection[dict[str, Any]]


def _post_order(client: TestClient, people: People, catalog: Catalog, key: str | None) -> Any:
    headers = dict(people.customer.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(
        "/orders",
        json={"items": [{"menu_item_id": catalog.items[0]["id"], "quantity": 2}]},
        headers=headers,
    )


def _write_retries() -> float:
    return REGISTRY.get_sample_value("zapora_db_write_retries_total") or 0.0


class _Request:
    """`request` in a thread, so the test can act on its backend while it waits."""

    def __init__(self, request: Callable[[], Any]) -> None:
        self._answer: list[Any] = []
        self.started = time.monotonic()
        self._thread = threading.Thread(target=lambda: self._answer.append(request()))
        self._thread.start()

    def answer(self, timeout: float = 15) -> Any:
        self._thread.join(timeout)
        assert self._answer, f"the request did not answer within {timeout} s"
        return self._answer[0]


def _waiting(db: DB, wait_event: str, spare: frozenset[int] = frozenset()) -> list[int]:
    """The backends inserting an order that wait on `wait_event`, but those in `spare`."""
    rows = db.execute(
        "SELECT pid FROM pg_stat_activity WHERE wait_event = %s AND query ILIKE %s"
        " AND NOT pid = ANY(%s)",
        (wait_event, "%INSERT INTO orders%", list(spare)),
    ).fetchall()
    return [int(row["pid"]) for row in rows]


def _waiter(db: DB, wait_event: str, spare: frozenset[int] = frozenset()) -> int:
    """The pid of a backend inserting an order (not one in `spare`: ended already), once one
    waits on `wait_event`."""
    deadline = time.monotonic() + 15
    while not (pids := _waiting(db, wait_event, spare)):
        assert time.monotonic() < deadline, f"no order insert waited on {wait_event}"
        time.sleep(0.02)
    return pids[0]


def _end(db: DB, pid: int) -> int:
    db.execute("SELECT pg_terminate_backend(%s)", (pid,))
    return pid


def _terminate(db: DB, wait_event: str, spare: frozenset[int] = frozenset()) -> int:
    """Once a backend inserting an order waits on `wait_event`, terminate it; its pid."""
    return _end(db, _waiter(db, wait_event, spare))


def _end_orphans(db: DB) -> None:
    """A connection the API shut under a request (the deadline) leaves its backend waiting on
    the lock: once the lock is gone it would commit the order nobody hears of (the unknown
    outcome). End it first, so the test sees only what the API made."""
    for pid in _waiting(db, "relation"):
        _end(db, pid)


def _assert_unavailable(r: Any) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert r.json()["status"] == 503


def _orders(db: DB) -> list[dict[str, Any]]:
    return db.execute("SELECT id, total_minor FROM orders").fetchall()


def _blocking(servers: srv.Servers) -> psycopg.Connection[Any]:
    """A session whose lock (taken next) makes the order's INSERT wait: its backend can be
    terminated while it waits, before anything commits."""
    return psycopg.connect(servers.primary.dsn())


def test_lost_before_commit_with_a_key_is_retried_and_creates_the_order_once(
    client: TestClient, people: People, catalog: Catalog, servers: srv.Servers, db: DB
) -> None:
    before = _write_retries()
    with _blocking(servers) as blocker:
        blocker.execute("LOCK TABLE orders IN SHARE MODE")
        request = _Request(lambda: _post_order(client, people, catalog, "lost-early"))
        first = _terminate(db, "relation")
        # The retry waits for the lock as well (or has not started): let it through.
        blocker.rollback()
        r = request.answer()
    assert r.status_code == 201, r.text
    assert _write_retries() == before + 1
    created = _orders(db)
    assert [str(o["id"]) for o in created] == [r.json()["id"]]
    gone = db.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = %s", (first,))
    assert gone.fetchone() == {"n": 0}
    again = _post_order(client, people, catalog, "lost-early")
    assert again.status_code == 201, again.text
    assert again.json() == r.json()
    assert len(_orders(db)) == 1


def test_lost_after_commit_with_a_key_returns_the_committed_order(
    settings: Settings, people: People, catalog: Catalog, servers: srv.Servers, db: DB
) -> None:
    # A synchronous standby that never connects: the commit is written locally and then
    # waits (SyncRep); terminated there, the client never hears that it committed. (The
    # test server runs with synchronous_commit off, for speed: on for this test.) A backend
    # applies a reload only between commands, so the API here starts after the change, on
    # connections that read it at their start.
    db.execute("ALTER SYSTEM SET synchronous_standby_names = 'zapora_test_absent_standby'")
    db.execute("ALTER SYSTEM SET synchronous_commit = 'on'")
    db.execute("SELECT pg_reload_conf()")
    before = _write_retries()
    try:
        srv.wait_until(lambda: _new_session_setting(servers) == "zapora_test_absent_standby")
        with TestClient(app_for(settings)) as client:
            request = _Request(lambda: _post_order(client, people, catalog, "lost-late"))
            _terminate(db, "SyncRep")
            r = request.answer()
    finally:
        db.execute("ALTER SYSTEM RESET synchronous_standby_names")
        db.execute("ALTER SYSTEM RESET synchronous_commit")
        db.execute("SELECT pg_reload_conf()")
        srv.wait_until(lambda: _new_session_setting(servers) == "")
    committed = _orders(db)
    assert len(committed) == 1
    # The retry found the key's record: the first attempt's response, not a second order.
    assert r.status_code == 201, r.text
    assert r.json()["id"] == str(committed[0]["id"])
    assert r.json()["total_minor"] == committed[0]["total_minor"]
    assert _write_retries() == before + 1


def test_lost_without_a_key_is_503(
    client: TestClient, people: People, catalog: Catalog, servers: srv.Servers, db: DB
) -> None:
    before = _write_retries()
    with _blocking(servers) as blocker:
        blocker.execute("LOCK TABLE orders IN SHARE MODE")
        request = _Request(lambda: _post_order(client, people, catalog, None))
        _terminate(db, "relation")
        r = request.answer()
        blocker.rollback()
    _assert_unavailable(r)
    assert _write_retries() == before
    assert _orders(db) == []


def test_lost_twice_is_503_and_a_later_retry_creates_the_order_once(
    client: TestClient, people: People, catalog: Catalog, servers: srv.Servers, db: DB
) -> None:
    before = _write_retries()
    with _blocking(servers) as blocker:
        # Held throughout: the retry's INSERT waits for it too, and is terminated as well.
        blocker.execute("LOCK TABLE orders IN SHARE MODE")
        request = _Request(lambda: _post_order(client, people, catalog, "lost-twice"))
        first = _terminate(db, "relation")
        second = _terminate(db, "relation", spare=frozenset({first}))
        r = request.answer()
        blocker.rollback()
    assert second != first
    _assert_unavailable(r)
    assert _write_retries() == before + 1
    assert _orders(db) == []
    retry = _post_order(client, people, catalog, "lost-twice")
    assert retry.status_code == 201, retry.text
    again = _post_order(client, people, catalog, "lost-twice")
    assert again.status_code == 201 and again.json()["id"] == retry.json()["id"]
    assert [str(o["id"]) for o in _orders(db)] == [retry.json()["id"]]


# The deadline rule (Database.write): the two attempts share the request deadline. No
# statement timeout here, so only the deadline (3 s) ends a statement that waits on a lock.
DEADLINE = 3.0


@pytest.fixture
def short_deadline(servers: srv.Servers, secret_file: Path) -> Iterator[TestClient]:
    settings = make_settings(
        servers, secret_file, db_statement_timeout_ms=0, db_request_deadline_seconds=DEADLINE
    )
    with TestClient(app_for(settings)) as client:
        yield client


def test_the_retry_gets_only_the_rest_of_the_deadline(
    short_deadline: TestClient,
    people: People,
    catalog: Catalog,
    servers: srv.Servers,
    db: DB,
) -> None:
    before = _write_retries()
    with _blocking(servers) as blocker:
        blocker.execute("LOCK TABLE orders IN SHARE MODE")
        request = _Request(lambda: _post_order(short_deadline, people, catalog, "late-retry"))
        # Lost after half the deadline: the retry (waiting on the lock) has 1.5 s, not 3 s.
        first = _waiter(db, "relation")
        time.sleep(max(0.0, request.started + DEADLINE / 2 - time.monotonic()))
        _end(db, first)
        r = request.answer()
        took = time.monotonic() - request.started
        _end_orphans(db)
        blocker.rollback()
    _assert_unavailable(r)
    assert _write_retries() == before + 1
    # A retry with a full deadline of its own would have answered after 4.5 s.
    assert took < DEADLINE + 0.8, took
    assert _orders(db) == []


def test_no_retry_once_the_deadline_is_spent(
    short_deadline: TestClient,
    people: People,
    catalog: Catalog,
    servers: srv.Servers,
    db: DB,
) -> None:
    before = _write_retries()
    with _blocking(servers) as blocker:
        blocker.execute("LOCK TABLE orders IN SHARE MODE")
        # Nothing terminates the backend: the deadline shuts its connection (lost), and
        # with nothing of the deadline left there is no retry.
        r = _post_order(short_deadline, people, catalog, "spent")
        _end_orphans(db)
        blocker.rollback()
    _assert_unavailable(r)
    assert _write_retries() == before
    assert _orders(db) == []


def test_a_statement_that_failed_on_a_live_connection_is_not_retried(
    servers: srv.Servers, secret_file: Path, people: People, catalog: Catalog, db: DB
) -> None:
    settings = make_settings(servers, secret_file, db_statement_timeout_ms=300)
    before = _write_retries()
    with TestClient(app_for(settings)) as client, _blocking(servers) as blocker:
        blocker.execute("LOCK TABLE orders IN SHARE MODE")
        # The statement timeout cancels the INSERT; the connection stays up.
        r = _post_order(client, people, catalog, "timed-out")
        blocker.rollback()
    _assert_unavailable(r)
    assert _write_retries() == before
    assert _orders(db) == []


def _new_session_setting(servers: srv.Servers) -> str:
    with psycopg.connect(servers.primary.dsn()) as conn:
        row = conn.execute("SHOW synchronous_standby_names").fetchone()
    return str(row[0]) if row else ""
