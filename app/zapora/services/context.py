"""The services and the infrastructure they share, built once per process."""

from __future__ import annotations

import time
from dataclasses import dataclass

from loguru import logger

from zapora.infra.db import Database, client_conninfo
from zapora.infra.errors import UNAVAILABLE
from zapora.infra.metrics import DEGRADED
from zapora.infra.redis import TracedRedis, redis_from_settings
from zapora.infra.security import TokenCodec
from zapora.services.pagination import CursorCodec
from zapora.settings import Settings

# The per-user write counter: INCRBY then EXPIRE NX (the window's key lives 61 s), as one
# script so that a write costs one command.
_COUNT_WRITE = """
local count = redis.call('INCRBY', KEYS[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[1], 'NX')
return count
"""


@dataclass
class Infra:
    settings: Settings
    db: Database
    redis: TracedRedis
    tokens: TokenCodec
    cursors: CursorCodec

    @classmethod
    def from_settings(cls, settings: Settings) -> Infra:
        def conninfo(dsn: str) -> str:
            return client_conninfo(
                dsn,
                keepalives_idle=settings.db_keepalives_idle_seconds,
                keepalives_interval=settings.db_keepalives_interval_seconds,
                keepalives_count=settings.db_keepalives_count,
                tcp_user_timeout_ms=settings.db_tcp_user_timeout_ms,
                statement_timeout_ms=settings.db_statement_timeout_ms,
            )

        replica = settings.replica_database_url
        return cls(
            settings=settings,
            db=Database(
                conninfo(settings.database_url),
                conninfo(replica) if replica else None,
                settings.db_pool_min,
                settings.db_pool_max,
                replica_wait_seconds=settings.replica_wait_seconds,
                replica_retry_seconds=settings.replica_retry_seconds,
                timeout=settings.db_pool_timeout_seconds,
                reconnect_timeout=settings.db_reconnect_timeout_seconds,
                deadline=settings.db_request_deadline_seconds,
            ),
            redis=redis_from_settings(settings),
            tokens=TokenCodec(
                settings.jwt_keys,
                settings.jwt_issuer,
                settings.jwt_audience,
                settings.jwt_leeway_seconds,
            ),
            cursors=CursorCodec(settings.jwt_keys),
        )

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()
        if self.redis.breaker is not None:
            self.redis.breaker.stop()
        await self.redis.aclose()

    def redis_skipped(self) -> bool:
        """Redis's circuit breaker is open: a caller that can do without Redis skips it here,
        without a command that would only raise."""
        breaker = self.redis.breaker
        return breaker is not None and breaker.skip()

    async def mark_fresh(self, user_id: object) -> None:
        """Remember that this client just wrote, so its next reads go to the primary."""
        if self.db.replica is None:
            return
        try:
            await self.redis.set(f"ryw:{user_id}", b"1", ex=self.settings.read_your_writes_seconds)
        except UNAVAILABLE as exc:
            # The write is committed; its answer must not fail. This client may read from the
            # replica during the next seconds (read-your-writes is best effort without Redis).
            DEGRADED.labels("redis", "mark_fresh").inc()
            logger.warning("could not mark {} fresh: {}", user_id, exc)

    async def check_write_rate(self, user_id: object) -> int:
        """Seconds to wait when this user used up its writes for the current minute, else 0.

        A fixed one-minute window in Redis, shared by every process; without Redis the
        limit is not enforced (the edge still limits per address)."""
        limit = self.settings.user_write_limit_per_minute
        if not limit:
            return 0
        if self.redis_skipped():
            DEGRADED.labels("redis", "write_rate_limit").inc()
            return 0
        now = int(time.time())
        key = f"rl:w:{user_id}:{now // 60}"
        try:
            # One command (the script) rather than a pipeline of two: less client work.
            count = await self.redis.eval(_COUNT_WRITE, 1, key, 61)
        except UNAVAILABLE:
            DEGRADED.labels("redis", "write_rate_limit").inc()
            return 0
        return 60 - now % 60 if int(count) > limit else 0

    async def is_fresh(self, user_id: object | None) -> bool:
        if self.db.replica is None:
            return True
        if user_id is None:
            return False
        try:
            return bool(await self.redis.exists(f"ryw:{user_id}"))
        except UNAVAILABLE:
            DEGRADED.labels("redis", "is_fresh").inc()
            return True  # without Redis nobody knows who wrote: read the primary
