"""A per-process copy of hot Redis cache entries, dropped on a pub/sub invalidation message.

It saves the Redis round trip on the hottest read. It is trusted only while the subscription
is known to deliver: the listener pings Redis whenever the channel has been quiet for
`heartbeat` seconds, and an entry is served only if something (a message or a pong) arrived
from Redis within the last `trust` seconds. Redis answers a subscriber in order, so a pong that
arrived means every message published before its ping arrived too. A subscription that stops
delivering without closing (half-open TCP: host down, partition, failover) therefore stops
being trusted `trust` seconds after it last delivered, and the listener resubscribes after
`reconnect` seconds of silence. A change made through the API thus shows in every process
within `trust` seconds (3 by default) even when that process missed its message.

Memory is bounded: at most `max_entries` entries and `max_bytes` of their bodies, the least
recently used entries going first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from loguru import logger
from redis.asyncio import Redis

V = TypeVar("V")

HEARTBEAT_SECONDS = 1.0
TRUST_SECONDS = 3.0
RECONNECT_SECONDS = 6.0
MAX_ENTRIES = 1024
MAX_BYTES = 16 * 1024 * 1024


def _body_size(value: object) -> int:
    return len(getattr(value, "body", b""))


class LocalCache(Generic[V]):
    def __init__(
        self,
        redis: Redis,
        channel: str,
        ttl_seconds: float,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        *,
        heartbeat: float = HEARTBEAT_SECONDS,
        trust: float = TRUST_SECONDS,
        reconnect: float = RECONNECT_SECONDS,
        size_of: Callable[[V], int] = _body_size,
    ) -> None:
        if not heartbeat < trust < reconnect:
            raise ValueError("need heartbeat < trust < reconnect")
        self.redis = redis
        self.channel = channel
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.heartbeat = heartbeat
        self.trust = trust
        self.reconnect = reconnect
        self._size_of = size_of
        # Least recently used first.
        self._entries: OrderedDict[bytes, tuple[float, V, int]] = OrderedDict()
        self.bytes = 0
        self._listening = False
        # When Redis was last heard from on the subscription (monotonic seconds).
        self._heard = 0.0
        # Bumped on every invalidation; a value fetched under an older generation is not kept.
        self.generation = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def trusted(self) -> bool:
        return self._listening and time.monotonic() - self._heard <= self.trust

    def get(self, key: bytes) -> V | None:
        if not self._listening:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = time.monotonic()
        if now - self._heard > self.trust or now - entry[0] > self.ttl:
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: bytes, value: V, generation: int) -> None:
        if not self.trusted or generation != self.generation:
            return
        size = len(key) + self._size_of(value)
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[2]
        while self._entries and (
            len(self._entries) >= self.max_entries or self.bytes + size > self.max_bytes
        ):
            _, (_, _, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted
        self._entries[key] = (time.monotonic(), value, size)
        self.bytes += size

    def invalidate_locally(self) -> None:
        self.generation += 1
        self._entries.clear()
        self.bytes = 0

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._listen(), name=f"local-cache:{self.channel}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        # Cancel until the task has ended. On Python 3.11, asyncio.wait_for can swallow a
        # cancellation that arrives as its inner call completes (the aclose in _listen's
        # cleanup): the task then went on subscribing, and a shutdown that awaited it once
        # waited forever (seen: the API's lifespan shutdown hung in a test run).
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1)
        with contextlib.suppress(asyncio.CancelledError):
            task.result()

    async def _receive(self, pubsub: Any) -> None:
        pinged_at = 0.0
        while True:
            message = await pubsub.get_message(timeout=self.heartbeat / 2)
            now = time.monotonic()
            if message is not None:
                self._heard = now
                if message.get("type") == "message":
                    self.invalidate_locally()
            elif now - self._heard > self.reconnect:
                raise ConnectionError(
                    f"nothing from Redis on {self.channel} for {self.reconnect} s"
                )
            elif now - self._heard >= self.heartbeat and now - pinged_at >= self.heartbeat:
                await pubsub.ping()
                pinged_at = now

    async def _listen(self) -> None:
        while not self._stopping:
            pubsub: Any = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                # Subscribed: every later write is announced, so entries may be kept from now.
                self.invalidate_locally()
                self._heard = time.monotonic()
                self._listening = True
                await self._receive(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - fall back to Redis and retry
                logger.warning("local cache {} unsubscribed: {}", self.channel, exc)
            finally:
                self._listening = False
                self.invalidate_locally()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), self.heartbeat)
            await asyncio.sleep(1)
