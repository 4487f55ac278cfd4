"""A per-process copy of hot Redis cache entries, dropped on a pub/sub invalidation message.

It saves the Redis round trip on the hottest read. It is used only while the subscription is
up: without it no entry is served, so a missed message can never leave a stale entry behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Generic, TypeVar

from loguru import logger
from redis.asyncio import Redis

V = TypeVar("V")

# The subscription pings Redis after this many quiet seconds and gives up on the connection
# when no pong follows within as many again: a primary that vanished without closing the
# socket (host down, partition, failover) is noticed and the listener resubscribes.
PING_AFTER_SECONDS = 5.0


class LocalCache(Generic[V]):
    def __init__(self, redis: Redis, channel: str, ttl_seconds: float, max_entries: int = 1024):
        self.redis = redis
        self.channel = channel
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple[float, V]] = {}
        self._listening = False
        # Bumped on every invalidation; a value fetched under an older generation is not kept.
        self.generation = 0
        self._task: asyncio.Task[None] | None = None

    def get(self, key: bytes) -> V | None:
        if not self._listening:
            return None
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] > self.ttl:
            return None
        return entry[1]

    def put(self, key: bytes, value: V, generation: int) -> None:
        if not self._listening or generation != self.generation:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (time.monotonic(), value)

    def invalidate_locally(self) -> None:
        self.generation += 1
        self._entries.clear()

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name=f"local-cache:{self.channel}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _receive(self, pubsub: Any) -> None:
        last_seen = time.monotonic()
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=1.0)
            now = time.monotonic()
            if message is not None:
                last_seen, pinged = now, False
                if message.get("type") == "message":
                    self.invalidate_locally()
            elif not pinged and now - last_seen > PING_AFTER_SECONDS:
                await pubsub.ping()
                pinged = True
            elif pinged and now - last_seen > 2 * PING_AFTER_SECONDS:
                raise ConnectionError(f"no pong from Redis on {self.channel}")

    async def _listen(self) -> None:
        while True:
            pubsub: Any = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                # Subscribed: every later write is announced, so entries may be kept from now.
                self.invalidate_locally()
                self._listening = True
                await self._receive(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - fall back to Redis and retry
                logger.warning("local cache {} unsubscribed: {}", self.channel, exc)
            finally:
                self._listening = False
                self.invalidate_locally()
                await pubsub.aclose()
            await asyncio.sleep(1)
