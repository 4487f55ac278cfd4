"""PostgreSQL pools: writes on the primary, lag-tolerant reads on a replica when configured."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from opentelemetry.trace import SpanKind
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from zapora.infra.tracing import tracer

Conn = AsyncConnection[DictRow]
Row = dict[str, Any]
Params = Sequence[Any] | dict[str, Any]


def _pool(dsn: str, min_size: int, max_size: int, name: str) -> AsyncConnectionPool[Conn]:
    return AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        kwargs={"row_factory": dict_row, "autocommit": True},
        name=name,
        open=False,
        # No per-checkout `check`: it costs a round trip on every request. A connection that
        # broke (server restart, failover) fails one request and the pool replaces it.
        max_idle=300,
    )


class Database:
    def __init__(
        self, primary_dsn: str, replica_dsn: str | None, min_size: int = 1, max_size: int = 10
    ) -> None:
        self.primary = _pool(primary_dsn, min_size, max_size, "primary")
        self.replica = _pool(replica_dsn, min_size, max_size, "replica") if replica_dsn else None

    async def open(self) -> None:
        await self.primary.open(wait=False)
        if self.replica is not None:
            await self.replica.open(wait=False)

    async def close(self) -> None:
        await self.primary.close()
        if self.replica is not None:
            await self.replica.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        async with self.primary.connection() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def reader(self, *, fresh: bool = False) -> AsyncIterator[Conn]:
        """A connection for reads; `fresh` forces the primary (the caller wrote recently)."""
        pool = self.primary if fresh or self.replica is None else self.replica
        async with pool.connection() as conn:
            yield conn


async def fetch_one(conn: Conn, sql: str, params: Params = ()) -> Row | None:
    with tracer.start_as_current_span(_span_name(sql), kind=SpanKind.CLIENT) as span:
        span.set_attribute("db.system", "postgresql")
        span.set_attribute("db.statement", sql)
        cur = await conn.execute(sql, params)
        return await cur.fetchone()


async def fetch_all(conn: Conn, sql: str, params: Params = ()) -> list[Row]:
    with tracer.start_as_current_span(_span_name(sql), kind=SpanKind.CLIENT) as span:
        span.set_attribute("db.system", "postgresql")
        span.set_attribute("db.statement", sql)
        cur = await conn.execute(sql, params)
        return await cur.fetchall()


async def execute(conn: Conn, sql: str, params: Params = ()) -> int:
    with tracer.start_as_current_span(_span_name(sql), kind=SpanKind.CLIENT) as span:
        span.set_attribute("db.system", "postgresql")
        span.set_attribute("db.statement", sql)
        cur = await conn.execute(sql, params)
        return cur.rowcount


def _span_name(sql: str) -> str:
    return "SQL " + sql.lstrip().split(None, 1)[0].upper()
