"""`make bench-lists`: list latency of GET /orders and GET /audit-events as the tables grow.

Loads orders and audit events into PostgreSQL with generate_series (N orders and 2 N audit
events, N = 10,000, then 100,000, then 1,000,000; each step adds to the previous one), and at
each size times sequential requests through the API under gunicorn (one worker, loopback):
p50 and p99 of a customer's own orders, a staff member's first page, a page deep in the list
(a cursor at the middle), a filtered page, the largest offset still accepted, and the same for
audit events. Beside them it times what the previous release ran per staff list request
(an exact count of every matching row, and an OFFSET 500,000 page) straight in SQL, and this
release's keyset page query likewise, so the growth that keyset pagination removes stays
visible even when a loaded machine blurs the request latencies.

Environment: BENCH_LIST_SIZES (default "10000,100000,1000000"), BENCH_LIST_REQUESTS (200
per case). About 4 minutes with the 1,000,000 step (most of it loading). The last line of the
output is the result as JSON.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import psycopg
from run import PASSWORD, _servers_module, gunicorn

SIZES = [int(n) for n in os.environ.get("BENCH_LIST_SIZES", "10000,100000,1000000").split(",")]
REQUESTS = int(os.environ.get("BENCH_LIST_REQUESTS", "200"))
CUSTOMERS = 1000


def seed_users(conn: psycopg.Connection[Any]) -> None:
    password_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    conn.execute(
        "INSERT INTO users (email, password_hash, full_name, role)"
        " SELECT 'c' || g || '@example.com', %s, 'Customer', 'customer'"
        " FROM generate_series(1, %s) AS g",
        (password_hash, CUSTOMERS),
    )
    for role in ("staff", "admin"):
        conn.execute(
            "INSERT INTO users (email, password_hash, full_name, role)"
            " VALUES (%s, %s, 'Bench', %s)",
            (f"{role}@example.com", password_hash, role),
        )


def grow(conn: psycopg.Connection[Any], have: int, want: int) -> None:
    """Orders have..want (one of six statuses, spread over 1,000 customers, one per 100 ms
    back in time) and twice as many audit events (one of 20 actions, half with an actor)."""
    started = time.monotonic()
    conn.execute(
        "INSERT INTO orders (user_id, status, total_minor, currency, created_at)"
        " SELECT u.ids[1 + g %% array_length(u.ids, 1)],"
        " (ARRAY['pending','confirmed','preparing','ready','delivered','cancelled'])[1 + g %% 6],"
        " 100 + g %% 5000, 'EUR', timestamptz '2026-11-25' - g * interval '100 ms'"
        " FROM generate_series(%s::int, %s::int) AS g,"
        " (SELECT array_agg(id ORDER BY email) AS ids FROM users WHERE role = 'customer') AS u",
        (have + 1, want),
    )
    conn.execute(
        "INSERT INTO audit_events (actor_id, action, target_type, occurred_at)"
        " SELECT CASE WHEN g %% 2 = 0 THEN u.ids[1 + g %% array_length(u.ids, 1)] END,"
        " 'bench.action_' || chr(97 + g %% 20), 'order',"
        " timestamptz '2026-11-25' - g * interval '50 ms'"
        " FROM generate_series(%s::int, %s::int) AS g,"
        " (SELECT array_agg(id ORDER BY email) AS ids FROM users) AS u",
        (2 * have + 1, 2 * want),
    )
    conn.execute("VACUUM ANALYZE orders")
    conn.execute("VACUUM ANALYZE audit_events")
    print(
        f"  loaded {want:,} orders and {2 * want:,} audit events in"
        f" {time.monotonic() - started:.0f} s",
        flush=True,
    )


def timed(client: httpx.Client, url: str, headers: dict[str, str]) -> dict[str, float]:
    r = client.get(url, headers=headers)  # warm: plan cache, connection, pages in memory
    assert r.status_code == 200, (url, r.status_code, r.text[:200])
    samples = []
    for _ in range(REQUESTS):
        t0 = time.perf_counter()
        r = client.get(url, headers=headers)
        samples.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, (url, r.status_code)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 2),
    }


def sql_ms(conn: psycopg.Connection[Any], sql: str, runs: int = 5) -> float:
    conn.execute(sql).fetchall()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        conn.execute(sql).fetchall()
        samples.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(samples), 1)


def middle_cursor(codec: Any, conn: psycopg.Connection[Any], table: str, n: int) -> str:
    at = "created_at" if table == "orders" else "occurred_at"
    row = conn.execute(
        f"SELECT {at}, id FROM {table} ORDER BY {at} DESC, id DESC OFFSET %s LIMIT 1",
        (n // 2,),
    ).fetchone()
    assert row
    scope = "orders:*:" if table == "orders" else "audit::"
    return str(codec.encode(scope, row[0], row[1]))


def main() -> int:
    from zapora.migrate import upgrade
    from zapora.services.pagination import CursorCodec

    servers_mod = _servers_module()
    tmp = Path(tempfile.mkdtemp(prefix="zapora-bench-lists-"))
    secret = tmp / "jwt"
    secret.write_text(secrets.token_hex(32))
    codec = CursorCodec(secret.read_text())
    results: dict[str, Any] = {}
    with servers_mod.started() as servers:
        servers.standby.stop()  # not read here; replaying the load would only add work
        dsn = servers.primary.dsn()
        upgrade(dsn)
        env = {
            "ZAPORA_ENVIRONMENT": "production",
            "ZAPORA_DATABASE_URL": dsn,
            "ZAPORA_REDIS_URL": servers.redis_url,
            "ZAPORA_JWT_SECRET_FILE": str(secret),
            "ZAPORA_WORKERS": "1",
        }
        os.environ["ZAPORA_WORKERS"] = "1"
        port = servers_mod.free_port()
        base = f"http://127.0.0.1:{port}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            seed_users(conn)
            api = gunicorn("zapora.api.app:create_app()", port, env, tmp / "prom")
            try:
                with httpx.Client(base_url=base, timeout=60) as client:
                    auth = {}
                    for who in ("c1", "staff", "admin"):
                        token = client.post(
                            "/auth/login",
                            json={"email": f"{who}@example.com", "password": PASSWORD},
                        ).json()["access_token"]
                        auth[who] = {"Authorization": f"Bearer {token}"}
                    have = 0
                    for n in SIZES:
                        grow(conn, have, n)
                        have = n
                        mid_o = middle_cursor(codec, conn, "orders", n)
                        mid_a = middle_cursor(codec, conn, "audit_events", 2 * n)
                        cases = {
                            "customer GET /orders": ("/orders?limit=20", "c1"),
                            "staff GET /orders": ("/orders?limit=20", "staff"),
                            "staff GET /orders, cursor at the middle": (
                                f"/orders?limit=20&cursor={mid_o}",
                                "staff",
                            ),
                            "staff GET /orders?status=ready": (
                                "/orders?limit=20&status=ready",
                                "staff",
                            ),
                            "staff GET /orders?offset=10000 (the bound)": (
                                "/orders?limit=20&offset=10000",
                                "staff",
                            ),
                            "admin GET /audit-events": ("/audit-events?limit=20", "admin"),
                            "admin GET /audit-events, cursor at the middle": (
                                f"/audit-events?limit=20&cursor={mid_a}",
                                "admin",
                            ),
                            "admin GET /audit-events?action=…": (
                                "/audit-events?limit=20&action=bench.action_h",
                                "admin",
                            ),
                        }
                        step: dict[str, Any] = {}
                        for name, (url, who) in cases.items():
                            step[name] = timed(client, url, auth[who])
                        mid_o_row = conn.execute(
                            "SELECT created_at, id FROM orders ORDER BY created_at DESC, id DESC"
                            " OFFSET %s LIMIT 1",
                            (n // 2,),
                        ).fetchone()
                        assert mid_o_row
                        step["this release, SQL only: keyset page at the middle"] = {
                            "ms": sql_ms(
                                conn,
                                "SELECT * FROM orders WHERE (created_at, id) <"
                                f" ('{mid_o_row[0].isoformat()}', '{mid_o_row[1]}')"
                                " ORDER BY created_at DESC, id DESC LIMIT 21",
                            )
                        }
                        step["previous release, SQL only: count(*) orders"] = {
                            "ms": sql_ms(conn, "SELECT count(*) FROM orders")
                        }
                        step["previous release, SQL only: count(*) audit_events"] = {
                            "ms": sql_ms(conn, "SELECT count(*) FROM audit_events")
                        }
                        if n > 500_000:
                            step["previous release, SQL only: orders OFFSET 500000"] = {
                                "ms": sql_ms(
                                    conn,
                                    "SELECT * FROM orders ORDER BY created_at DESC, id"
                                    " LIMIT 20 OFFSET 500000",
                                    3,
                                )
                            }
                        results[f"{n} orders / {2 * n} audit events"] = step
                        print(f"{n:,} orders, {2 * n:,} audit events:", flush=True)
                        for name, figures in step.items():
                            shown = ", ".join(f"{k} {v}" for k, v in figures.items())
                            print(f"  {name:58} {shown}", flush=True)
            finally:
                api.terminate()
                api.wait(30)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
