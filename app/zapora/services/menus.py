"""Menus and menu items: public reads (item lists cached in Redis), audited staff writes."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from loguru import logger

from zapora.infra.db import Row
from zapora.infra.errors import UNAVAILABLE
from zapora.infra.local_cache import LocalCache
from zapora.infra.metrics import DEGRADED
from zapora.repositories import menus as repo
from zapora.repositories import outbox
from zapora.services.audit import AuditService
from zapora.services.common import Actor, Conflict, NotFound, Origin, Page
from zapora.services.context import Infra
from zapora.services.outbox import MENU_CHANGED

# Writers bump the epoch after commit; a cached list filled under an older epoch is a miss.
# That closes the race where a slow reader fills the cache with rows from before a write.
CACHE_KEY = "menu-items:lists"
INVALIDATION_CHANNEL = "menu-items:invalidate"
EPOCH_FIELD = b"epoch"
# Store a list only if no write happened since its rows were read (the epoch is unchanged).
# The hash's TTL is set by the first fill only (EXPIRE NX), never extended: every list in it,
# and every field of an older epoch, is gone at most ZAPORA_MENU_CACHE_TTL_SECONDS after that
# fill, even under steady traffic, so a change made outside the API (SQL, restore) shows.
_FILL_IF_CURRENT = """
local current = redis.call('HGET', KEYS[1], ARGV[1]) or '0'
if current == ARGV[3] then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5], 'NX')
  return 1
end
return 0
"""


@dataclass(frozen=True)
class CachedList:
    body: bytes
    etag: str


@dataclass(frozen=True)
class ItemFilter:
    menu_id: UUID | None = None
    available: bool | None = None
    q: str | None = None


def _json_default(value: object) -> str:
    return str(value)


class MenuService:
    def __init__(self, infra: Infra, audit: AuditService) -> None:
        self.infra = infra
        self.audit = audit
        # This process's copy of recent lists, for the HTTP layer's response fast path; every
        # write here drops it in all processes.
        self.local: LocalCache[CachedList] = LocalCache(
            infra.redis, INVALIDATION_CHANNEL, infra.settings.menu_cache_ttl_seconds
        )
        # While Redis is away: lists this process read, kept menu_outage_cache_seconds, so an
        # outage does not turn every list request into a PostgreSQL query (the breaker makes
        # the Redis attempt free; this makes the read cheap). Nothing announces another
        # process's writes then, so they show here within that time; this process's own
        # writes drop it at once.
        self._outage: dict[bytes, tuple[float, CachedList]] = {}
        self._refreshing: set[bytes] = set()

    # --- menus ----------------------------------------------------------------------
    async def list_menus(self, page: Page, fresh: bool) -> tuple[list[Row], int]:
        return await self.infra.db.read(
            lambda conn: repo.menus_page(conn, page.limit, page.offset), fresh=fresh
        )

    async def get_menu(self, menu_id: UUID, fresh: bool) -> Row:
        row = await self.infra.db.read(lambda conn: repo.menu(conn, menu_id), fresh=fresh)
        if row is None:
            raise NotFound("Menu not found.")
        return row

    async def create_menu(self, actor: Actor, origin: Origin, name: str, description: str) -> Row:
        async with self.infra.db.transaction() as conn:
            row = await repo.insert_menu(conn, name, description)
            await self._audit(conn, actor, origin, "menu.created", "menu", row["id"])
        await self._after_write(actor)
        return row

    async def update_menu(
        self, actor: Actor, origin: Origin, menu_id: UUID, changes: dict[str, Any]
    ) -> Row:
        async with self.infra.db.transaction() as conn:
            if changes:
                row = await repo.update_row(conn, "menus", repo.MENU_COLUMNS, menu_id, changes)
            else:
                row = await repo.menu(conn, menu_id)
            if row is None:
                raise NotFound("Menu not found.")
            await self._audit(conn, actor, origin, "menu.updated", "menu", menu_id, changes)
        await self._after_write(actor)
        return row

    async def delete_menu(self, actor: Actor, origin: Origin, menu_id: UUID) -> None:
        async with self.infra.db.transaction() as conn:
            if await repo.menu_has_items(conn, menu_id):
                raise Conflict("The menu still has items; delete or move them first.")
            if not await repo.delete_row(conn, "menus", menu_id):
                raise NotFound("Menu not found.")
            await self._audit(conn, actor, origin, "menu.deleted", "menu", menu_id)
        await self._after_write(actor)

    # --- items ----------------------------------------------------------------------
    async def list_items_cached(self, page: Page, flt: ItemFilter) -> CachedList:
        field = json.dumps(
            [page.limit, page.offset, str(flt.menu_id), flt.available, flt.q]
        ).encode()
        if self.infra.redis_skipped():
            DEGRADED.labels("redis", "menu_item_list").inc()
            return await self._outage_list(field, page, flt, "circuit open")
        # One round trip: the epoch lives in the same hash as the cached lists.
        try:
            values: list[bytes | None] = await self.infra.redis.hmget(  # type: ignore[assignment]
                CACHE_KEY, [EPOCH_FIELD, field]
            )
        except UNAVAILABLE as exc:
            # Redis is away: serve from PostgreSQL, kept briefly in this process.
            DEGRADED.labels("redis", "menu_item_list").inc()
            return await self._outage_list(field, page, flt, exc)
        epoch_raw, cached = values
        epoch = epoch_raw or b"0"
        if cached is not None:
            cached_epoch, cached_etag, cached_body = cached.split(b"\n", 2)
            if cached_epoch == epoch:
                return CachedList(cached_body, cached_etag.decode())
        fresh = await self._read_list(page, flt)
        try:
            await self.infra.redis.eval(
                _FILL_IF_CURRENT,
                1,
                CACHE_KEY,
                EPOCH_FIELD,
                field,
                epoch,
                epoch + b"\n" + fresh.etag.encode() + b"\n" + fresh.body,
                self.infra.settings.menu_cache_ttl_seconds,
            )
        except UNAVAILABLE as exc:
            DEGRADED.labels("redis", "menu_item_fill").inc()
            logger.warning("menu-item list not cached: {}", exc)
        return fresh

    async def _outage_list(
        self, field: bytes, page: Page, flt: ItemFilter, why: object
    ) -> CachedList:
        now = time.monotonic()
        kept = self._outage.get(field)
        if kept is not None and (
            now - kept[0] < self.infra.settings.menu_outage_cache_seconds
            or field in self._refreshing
        ):
            # Fresh enough, or another request is reading it now: no stampede of reads.
            return kept[1]
        logger.warning("menu-item list served from PostgreSQL, Redis: {}", why)
        self._refreshing.add(field)
        try:
            fresh = await self._read_list(page, flt)
        finally:
            self._refreshing.discard(field)
        if len(self._outage) >= 256:
            self._outage.clear()
        if self.infra.settings.menu_outage_cache_seconds:
            self._outage[field] = (now, fresh)
        return fresh

    async def _read_list(self, page: Page, flt: ItemFilter) -> CachedList:
        # Misses read the primary so the cache never holds rows a replica has not caught up on.
        rows, total = await self.infra.db.read(
            lambda conn: repo.items_page(
                conn, page.limit, page.offset, flt.menu_id, flt.available, flt.q
            ),
            fresh=True,
        )
        body = json.dumps(
            {"items": rows, "total": total, "limit": page.limit, "offset": page.offset},
            default=_json_default,
            separators=(",", ":"),
        ).encode()
        etag = '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
        return CachedList(body, etag)

    async def get_item(self, item_id: UUID, fresh: bool) -> Row:
        row = await self.infra.db.read(lambda conn: repo.item(conn, item_id), fresh=fresh)
        if row is None:
            raise NotFound("Menu item not found.")
        return row

    async def create_item(self, actor: Actor, origin: Origin, values: dict[str, Any]) -> Row:
        try:
            async with self.infra.db.transaction() as conn:
                row = await repo.insert_item(conn, values)
                await self._audit(conn, actor, origin, "menu_item.created", "menu_item", row["id"])
        except psycopg.errors.ForeignKeyViolation as exc:
            raise Conflict("The menu does not exist.") from exc
        await self._after_write(actor)
        return row

    async def update_item(
        self, actor: Actor, origin: Origin, item_id: UUID, changes: dict[str, Any]
    ) -> Row:
        try:
            async with self.infra.db.transaction() as conn:
                if changes:
                    row = await repo.update_row(
                        conn, "menu_items", repo.ITEM_COLUMNS, item_id, changes
                    )
                else:
                    row = await repo.item(conn, item_id)
                if row is None:
                    raise NotFound("Menu item not found.")
                await self._audit(
                    conn, actor, origin, "menu_item.updated", "menu_item", item_id, changes
                )
        except psycopg.errors.ForeignKeyViolation as exc:
            raise Conflict("The menu does not exist.") from exc
        await self._after_write(actor)
        return row

    async def delete_item(self, actor: Actor, origin: Origin, item_id: UUID) -> None:
        async with self.infra.db.transaction() as conn:
            if not await repo.delete_row(conn, "menu_items", item_id):
                raise NotFound("Menu item not found.")
            await self._audit(conn, actor, origin, "menu_item.deleted", "menu_item", item_id)
        await self._after_write(actor)

    async def _audit(
        self,
        conn: Any,
        actor: Actor,
        origin: Origin,
        action: str,
        target_type: str,
        target_id: UUID,
        changes: dict[str, Any] | None = None,
    ) -> None:
        await self.audit.record(
            action,
            actor_id=actor.id,
            origin=origin,
            target_type=target_type,
            target_id=target_id,
            details={k: str(v) for k, v in (changes or {}).items()},
            conn=conn,
        )
        # Every menu write runs through here inside its transaction: the outbox row makes the
        # cache invalidation as durable as the change (the worker relays it).
        await outbox.add(conn, MENU_CHANGED, str(target_id), {"action": action})

    async def _after_write(self, actor: Actor) -> None:
        """Invalidate at once (best effort); the outbox row guarantees it if Redis is away."""
        self.local.invalidate_locally()
        self._outage.clear()
        try:
            await self.infra.redis.hincrby(CACHE_KEY, EPOCH_FIELD, 1)
            await self.infra.redis.publish(INVALIDATION_CHANNEL, b"invalidate")
        except UNAVAILABLE as exc:
            DEGRADED.labels("redis", "menu_invalidation").inc()
            logger.warning("menu cache invalidation deferred to the outbox relay: {}", exc)
        await self.infra.mark_fresh(actor.id)
