"""The services and the infrastructure they share, built once per process."""

from __future__ import annotations

from dataclasses import dataclass

from zapora.infra.db import Database
from zapora.infra.redis import TracedRedis, redis_from_settings
from zapora.infra.security import TokenCodec
from zapora.settings import Settings


@dataclass
class Infra:
    settings: Settings
    db: Database
    redis: TracedRedis
    tokens: TokenCodec

    @classmethod
    def from_settings(cls, settings: Settings) -> Infra:
        return cls(
            settings=settings,
            db=Database(
                settings.database_url,
                settings.replica_database_url,
                settings.db_pool_min,
                settings.db_pool_max,
            ),
            redis=redis_from_settings(settings),
            tokens=TokenCodec(
                settings.jwt_secret.get_secret_value(), settings.jwt_issuer, settings.jwt_audience
            ),
        )

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()
        await self.redis.aclose()

    async def mark_fresh(self, user_id: object) -> None:
        """Remember that this client just wrote, so its next reads go to the primary."""
        if self.db.replica is not None:
            await self.redis.set(f"ryw:{user_id}", b"1", ex=self.settings.read_your_writes_seconds)

    async def is_fresh(self, user_id: object | None) -> bool:
        if self.db.replica is None:
            return True
        if user_id is None:
            return False
        return bool(await self.redis.exists(f"ryw:{user_id}"))
