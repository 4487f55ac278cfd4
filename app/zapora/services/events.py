"""Order-event consumer: a Redis stream consumer group, at-least-once, acked after processing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from datetime import datetime
from typing import Any

from loguru import logger
from redis.exceptions import ResponseError

from zapora.infra.db import execute
from zapora.infra.metrics import ORDER_EVENTS_DEAD_LETTERED, ORDER_EVENTS_PROCESSED
from zapora.repositories import orders as orders_repo
from zapora.repositories import tokens as tokens_repo
from zapora.services.context import Infra
from zapora.services.outbox import OutboxRelay

Entry = tuple[bytes, dict[bytes, bytes]]
PURGE_DEADLINE_SECONDS = 300.0


class OrderEventConsumer:
    def __init__(self, infra: Infra, consumer: str | None = None) -> None:
        self.infra = infra
        self.stream = infra.settings.order_stream
        self.group = infra.settings.worker_group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._stopping = asyncio.Event()
        self.relay = OutboxRelay(infra)
        self.dead_stream = f"{self.stream}:dead"

    def stop(self) -> None:
        self._stopping.set()

    async def ensure_group(self) -> None:
        try:
            await self.infra.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def process(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        data = {k.decode(): v.decode() for k, v in fields.items()}
        # Recorded once per change: a redelivered entry repeats its stream id (the primary
        # key), an outbox row relayed twice (the relay died before deleting it, or its XADD
        # missed the replicas' deadline) repeats its outbox id (unique, migration 0004).
        outbox_id = data.get("outbox_id")
        async with self.infra.db.transaction() as conn:
            await execute(
                conn,
                "INSERT INTO order_events (stream_id, order_id, status, occurred_at, outbox_id)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (
                    entry_id.decode(),
                    data["order_id"],
                    data["status"],
                    datetime.fromisoformat(data["occurred_at"]),
                    int(outbox_id) if outbox_id else None,
                ),
            )
        await self.infra.redis.xack(self.stream, self.group, entry_id)
        ORDER_EVENTS_PROCESSED.inc()
        logger.bind(kind="order_event", stream_id=entry_id.decode(), **data).info("order event")

    async def reclaim(self) -> int:
        """Take over entries another consumer read but never acknowledged (it crashed)."""
        count = 0
        start = "0-0"
        while True:
            result: Any = await self.infra.redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self.infra.settings.worker_reclaim_idle_ms,
                start_id=start,
                count=100,
            )
            next_start, entries = result[0], result[1]
            for entry_id, fields in entries:
                if not fields:
                    continue
                if await self._deliveries(entry_id) > self.infra.settings.worker_max_deliveries:
                    await self._dead_letter(entry_id, fields)
                    continue
                await self.process(entry_id, fields)
                count += 1
            start = next_start.decode() if isinstance(next_start, bytes) else str(next_start)
            if start == "0-0":
                return count

    async def _deliveries(self, entry_id: bytes) -> int:
        pending: Any = await self.infra.redis.xpending_range(
            self.stream, self.group, min=entry_id, max=entry_id, count=1
        )
        return int(pending[0]["times_delivered"]) if pending else 0

    async def _dead_letter(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        """An entry that failed every delivery moves aside, so it stops blocking the loop."""
        async with self.infra.redis.pipeline(transaction=True) as pipe:
            dead: dict[Any, Any] = {**fields, b"stream_id": entry_id}
            pipe.xadd(self.dead_stream, dead, maxlen=100_000)
            pipe.xack(self.stream, self.group, entry_id)
            await pipe.execute()
        ORDER_EVENTS_DEAD_LETTERED.inc()
        logger.bind(kind="order_event", stream_id=entry_id.decode()).error(
            "order event dead-lettered to {} after {} deliveries",
            self.dead_stream,
            self.infra.settings.worker_max_deliveries,
        )

    async def run_once(self, block_ms: int | None = None, relay: bool = True) -> int:
        """One pass: relay the outbox (unless a relay task does), reclaim, read new entries."""
        if relay:
            await self.relay.relay_once()
        await self.reclaim()
        response: Any = await self.infra.redis.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=50,
            block=self.infra.settings.worker_block_ms if block_ms is None else block_ms,
        )
        handled = 0
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                await self.process(entry_id, fields)
                handled += 1
        return handled

    async def purge_idempotency_keys(self) -> int:
        # A day of keys may take longer than a request's statement timeout to delete.
        async with self.infra.db.transaction(deadline=PURGE_DEADLINE_SECONDS) as conn:
            await execute(
                conn, f"SET LOCAL statement_timeout = {int(PURGE_DEADLINE_SECONDS - 10)}000"
            )
            purged = await orders_repo.purge_idempotency_keys(
                conn, self.infra.settings.idempotency_key_ttl_hours
            )
            purged_tokens = await tokens_repo.purge_expired(conn)
        if purged or purged_tokens:
            logger.info(
                "purged {} expired idempotency keys, {} expired token rows", purged, purged_tokens
            )
        return purged

    async def relay_forever(self) -> None:
        """Relay the outbox every ZAPORA_OUTBOX_POLL_MS, at once again while rows remain."""
        interval = self.infra.settings.outbox_poll_ms / 1000
        while not self._stopping.is_set():
            try:
                if await self.relay.relay_once():
                    continue
            except Exception:  # noqa: BLE001 - rows stay in the outbox; retried next pass
                logger.exception("outbox relay failed; retrying")
                await asyncio.sleep(1)
            await asyncio.sleep(interval)

    async def run(self) -> None:
        logger.info("worker {} consuming {} as group {}", self.consumer, self.stream, self.group)
        relay = asyncio.create_task(self.relay_forever(), name="outbox-relay")
        next_purge = 0.0
        group_ready = False
        try:
            while not self._stopping.is_set():
                try:
                    if not group_ready:
                        await self.ensure_group()
                        group_ready = True
                    if time.monotonic() >= next_purge:
                        await self.purge_idempotency_keys()
                        next_purge = time.monotonic() + self.infra.settings.purge_interval_seconds
                    await self.run_once(relay=False)
                except Exception:  # noqa: BLE001 - keep consuming; the entry stays pending
                    logger.exception("order event processing failed; retrying")
                    await asyncio.sleep(1)
        finally:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
