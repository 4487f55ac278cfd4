"""The order-event worker: consumer group, ack after processing, reclaim after a crash."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import redis
from fastapi.testclient import TestClient

from zapora.services.context import Infra
from zapora.services.events import OrderEventConsumer
from zapora.settings import Settings

from . import servers as srv
from .conftest import Catalog, People

STREAM = "zapora:order-events"
GROUP = "zapora-workers"


def _order(client: TestClient, people: People, catalog: Catalog) -> dict[str, Any]:
    r = client.post(
        "/orders",
        json={"items": [{"menu_item_id": catalog.items[0]["id"], "quantity": 1}]},
        headers=people.customer.headers,
    )
    assert r.status_code == 201
    body: dict[str, Any] = r.json()
    return body


async def _consume(settings: Settings, consumer_name: str) -> int:
    infra = Infra.from_settings(settings)
    await infra.open()
    try:
        consumer = OrderEventConsumer(infra, consumer_name)
        await consumer.ensure_group()
        await consumer.ensure_group()  # a second call finds the group and carries on
        return await consumer.run_once(block_ms=100)
    finally:
        await infra.close()


def test_consumer_processes_and_acks(
    client: TestClient,
    people: People,
    catalog: Catalog,
    settings: Settings,
    db: psycopg.Connection[dict[str, Any]],
    rds: redis.Redis,
) -> None:
    order = _order(client, people, catalog)
    assert asyncio.run(_consume(settings, "t1")) == 1
    rows = db.execute("SELECT order_id, status FROM order_events").fetchall()
    assert rows == [{"order_id": __import__("uuid").UUID(order["id"]), "status": "pending"}]
    assert rds.xpending(STREAM, GROUP)["pending"] == 0


def _worker_env(servers: srv.Servers, secret_file: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "ZAPORA_ENVIRONMENT": "test",
        "ZAPORA_DATABASE_URL": servers.primary.dsn(),
        "ZAPORA_REDIS_URL": servers.redis_url,
        "ZAPORA_JWT_SECRET_FILE": str(secret_file),
        "ZAPORA_WORKER_BLOCK_MS": "200",
        "ZAPORA_WORKER_METRICS_PORT": str(srv.free_port()),
        **extra,
    }


def test_worker_killed_mid_message_is_reclaimed(
    client: TestClient,
    people: People,
    catalog: Catalog,
    servers: srv.Servers,
    secret_file: Path,
    db: psycopg.Connection[dict[str, Any]],
    rds: redis.Redis,
) -> None:
    order = _order(client, people, catalog)
    worker = [sys.executable, "-m", "zapora.cli", "worker"]
    # Hold a lock the worker's write needs, so it is stuck inside processing when killed.
    with psycopg.connect(servers.primary.dsn()) as blocker:
        blocker.execute("LOCK TABLE order_events IN ACCESS EXCLUSIVE MODE")
        first = subprocess.Popen(
            worker, env=_worker_env(servers, secret_file), stdout=subprocess.DEVNULL
        )
        try:
            srv.wait_until(
                lambda: (
                    rds.xpending(STREAM, GROUP)["pending"] == 1
                    if rds.exists(STREAM) and rds.xinfo_groups(STREAM)
                    else False
                )
            )
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
        blocker.rollback()
    assert db.execute("SELECT count(*) AS n FROM order_events").fetchone() == {"n": 0}
    assert rds.xpending(STREAM, GROUP)["pending"] == 1

    second = subprocess.Popen(
        worker,
        env=_worker_env(servers, secret_file, ZAPORA_WORKER_RECLAIM_IDLE_MS="300"),
        stdout=subprocess.DEVNULL,
    )
    try:
        srv.wait_until(
            lambda: db.execute("SELECT count(*) AS n FROM order_events").fetchone() == {"n": 1}
        )
        srv.wait_until(lambda: rds.xpending(STREAM, GROUP)["pending"] == 0)
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0  # stops cleanly on SIGTERM
    finally:
        if second.poll() is None:
            second.kill()
    row = db.execute("SELECT order_id FROM order_events").fetchone()
    assert row is not None and str(row["order_id"]) == order["id"]


async def _purge(settings: Settings) -> int:
    infra = Infra.from_settings(settings)
    await infra.open()
    try:
        return await OrderEventConsumer(infra, "purger").purge_idempotency_keys()
    finally:
        await infra.close()


def test_old_idempotency_keys_are_purged(
    client: TestClient,
    people: People,
    catalog: Catalog,
    settings: Settings,
    db: psycopg.Connection[dict[str, Any]],
) -> None:
    for key in ("old", "new"):
        r = client.post(
            "/orders",
            json={"items": [{"menu_item_id": catalog.items[0]["id"], "quantity": 1}]},
            headers={**people.customer.headers, "Idempotency-Key": key},
        )
        assert r.status_code == 201
    db.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old'"
    )
    assert asyncio.run(_purge(settings)) == 1
    assert [r["key"] for r in db.execute("SELECT key FROM idempotency_keys")] == ["new"]
