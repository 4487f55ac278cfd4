"""The outbox relay and the consumer against real PostgreSQL and Redis: an event that did not
reach its replicas stays in the outbox, and an outbox row relayed twice (the relay died
between its XADD and its DELETE) is recorded once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import redis
from psycopg.rows import dict_row

from zapora.infra.redis import NotReplicatedError
from zapora.services.context import Infra
from zapora.services.events import OrderEventConsumer
from zapora.services.outbox import ORDER_EVENT, OutboxRelay
from zapora.settings import Settings

from .conftest import relay_outbox

STREAM = "zapora:order-events"


def outbox_row(db: psycopg.Connection[dict[str, Any]]) -> tuple[int, uuid.UUID]:
    order_id = uuid.uuid4()
    payload = {
        "event": "order.created",
        "order_id": str(order_id),
        "status": "pending",
        "version": "1",
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    row = db.execute(
        "INSERT INTO outbox (topic, aggregate_id, payload) VALUES (%s, %s, %s) RETURNING id",
        (ORDER_EVENT, str(order_id), psycopg.types.json.Jsonb(payload)),
    ).fetchone()
    assert row is not None
    return int(row["id"]), order_id


async def consume_once(settings: Settings) -> int:
    """One consumer pass (no relay) on a client of its own."""
    infra = Infra.from_settings(settings)
    await infra.open()
    try:
        consumer = OrderEventConsumer(infra, "t-outbox")
        await consumer.ensure_group()
        return await consumer.run_once(block_ms=100, relay=False)
    finally:
        await infra.close()


def recorded(db: psycopg.Connection[dict[str, Any]], order_id: uuid.UUID) -> list[Any]:
    return db.execute(
        "SELECT outbox_id FROM order_events WHERE order_id = %s", (order_id,)
    ).fetchall()


def test_an_event_no_replica_has_stays_in_the_outbox(
    settings: Settings, db: psycopg.Connection[dict[str, Any]], rds: redis.Redis
) -> None:
    """The session's Redis has no replica: with ZAPORA_REDIS_WAIT_REPLICAS=1 the relay's WAIT
    times out, the relay reports it and keeps the row; the row goes out once a relay needs
    no replica, and the consumer records the change once although the stream holds it twice."""
    outbox_id, order_id = outbox_row(db)
    waiting = settings.model_copy(update={"redis_wait_replicas": 1, "redis_wait_timeout_ms": 100})
    with pytest.raises(NotReplicatedError, match="reached 0 of 1 replicas"):
        asyncio.run(relay_outbox(waiting))
    assert db.execute("SELECT id FROM outbox").fetchall() == [{"id": outbox_id}]
    assert asyncio.run(relay_outbox(settings)) == 1
    assert db.execute("SELECT id FROM outbox").fetchall() == []
    assert rds.xlen(STREAM) == 2  # the first XADD reached the primary
    assert asyncio.run(consume_once(settings)) == 2
    assert recorded(db, order_id) == [{"outbox_id": outbox_id}]


async def _relay_killed_before_delete(settings: Settings, dsn: str) -> None:
    """A relay whose DELETE waits on a lock is terminated there: its XADD is in the stream,
    its transaction (and so the DELETE) never commits, as when the process dies."""
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as blocker:
        # SHARE lets the relay read the outbox but not delete from it.
        await blocker.execute("BEGIN")
        await blocker.execute("LOCK TABLE outbox IN SHARE MODE")
        infra = Infra.from_settings(settings)
        await infra.open()
        try:
            relay = asyncio.create_task(OutboxRelay(infra).relay_once())
            async with await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, row_factory=dict_row
            ) as admin:
                deadline = asyncio.get_running_loop().time() + 10
                while True:
                    waiting = await (
                        await admin.execute(
                            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                            " AND query LIKE 'DELETE FROM outbox%%'"
                        )
                    ).fetchall()
                    if waiting:
                        break
                    assert asyncio.get_running_loop().time() < deadline, "no relay DELETE"
                    await asyncio.sleep(0.02)
                await admin.execute("SELECT pg_terminate_backend(%s)", (waiting[0]["pid"],))
            with pytest.raises(psycopg.OperationalError):
                await relay
        finally:
            await infra.close()
        await blocker.execute("ROLLBACK")


def test_a_row_relayed_twice_is_recorded_once(
    settings: Settings,
    db: psycopg.Connection[dict[str, Any]],
    rds: redis.Redis,
    servers: Any,
) -> None:
    outbox_id, order_id = outbox_row(db)
    asyncio.run(_relay_killed_before_delete(settings, servers.primary.dsn()))
    assert db.execute("SELECT id FROM outbox").fetchall() == [{"id": outbox_id}]
    assert rds.xlen(STREAM) == 1
    # The next relay sends the row again, under a new stream id, and deletes it.
    assert asyncio.run(relay_outbox(settings)) == 1
    entries = rds.xrange(STREAM)
    assert len({entry_id for entry_id, _ in entries}) == 2
    assert {fields[b"outbox_id"] for _, fields in entries} == {str(outbox_id).encode()}
    assert asyncio.run(consume_once(settings)) == 2
    assert recorded(db, order_id) == [{"outbox_id": outbox_id}]
