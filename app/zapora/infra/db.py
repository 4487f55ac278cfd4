"""PostgreSQL pools: writes on the primary, lag-tolerant reads on a replica when configured."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import psycopg
from loguru import logger
from opentelemetry.trace import SpanKind
from prometheus_client import Counter
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from zapora.infra.metrics import READ_RETRIES, WRITE_RETRIES
from zapora.infra.tracing import tracer, tracing_enabled

Conn = AsyncConnection[DictRow]
Row = dict[str, Any]
Params = Sequence[Any] | dict[str, Any]
T = TypeVar("T")
# A write's retry is made only with at least this much of the request deadline left: with
# less, the deadline would most likely cut it off as well, and its outcome would be as
# unknown as the first one's (docs/postgresql.md, "Connections lost under a write").
WRITE_RETRY_MIN_SECONDS = 1.0


def client_conninfo(
    dsn: str,
    *,
    keepalives_idle: int,
    keepalives_interval: int,
    keepalives_count: int,
    tcp_user_timeout_ms: int,
    statement_timeout_ms: int,
) -> str:
    """The API's conninfo: TCP keepalives and tcp_user_timeout, so a peer that vanished or
    froze is given up after seconds instead of the kernel's minutes, and a statement_timeout
    (sent as a startup option: no round trip). What the operator's string sets wins."""
    given = conninfo_to_dict(dsn)
    extra: dict[str, str | int] = {
        key: value
        for key, value in (
            ("keepalives", 1),
            ("keepalives_idle", keepalives_idle),
            ("keepalives_interval", keepalives_interval),
            ("keepalives_count", keepalives_count),
            ("tcp_user_timeout", tcp_user_timeout_ms),
        )
        if key not in given
    }
    options = str(given.get("options") or "")
    if statement_timeout_ms and "statement_timeout" not in options:
        extra["options"] = f"{options} -c statement_timeout={statement_timeout_ms}".strip()
    return make_conninfo(dsn, **extra)


def _sever(conn: Conn, deadline: float) -> None:
    """Shut the connection's socket down under a request that outlived its deadline: the
    server did not answer (frozen, partitioned: its own statement_timeout could not act).
    The waiting query then fails at once as a lost connection (503) instead of hanging;
    cancelling the task instead would make psycopg wait on the frozen server again."""
    if conn.closed:
        return
    logger.warning("no answer from PostgreSQL within {} s: closing the connection", deadline)
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def _lost(conn: Conn | None) -> bool:
    """Whether the connection a query failed on (psycopg.OperationalError) is gone: the server
    terminated the backend, restarted or failed over, or _sever shut it; psycopg marks it
    broken or closed. A statement that failed on a live connection (statement timeout, lock
    timeout) leaves it open: the server rolled it back, so its outcome is known. None: the
    failure came before a connection was handed out (no work ran)."""
    return conn is not None and (conn.broken or conn.closed)


def _still_open(conn: Conn) -> bool:
    """The checkout check, without a round trip: an idle connection's socket has something
    to read only when the server closed it or said it is terminating it (restart, failover,
    switchover)."""
    if conn.closed or conn.broken:
        return False
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    return not readable


async def _keep_trying(pool: AsyncConnectionPool[Conn]) -> None:
    """A connection attempt ran out of reconnect_timeout: start a fresh one at once
    (`check()` grows a pool that has room), so that while the database is away the pool
    tries every second or two on its own, not only when a request comes to wait."""
    with contextlib.suppress(PoolClosed):
        await pool.check()


def _pool(
    dsn: str, min_size: int, max_size: int, name: str, timeout: float, reconnect_timeout: float
) -> AsyncConnectionPool[Conn]:
    return AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        # How long a request waits for a connection before it is answered 503.
        timeout=timeout,
        kwargs={"row_factory": dict_row, "autocommit": True},
        name=name,
        open=False,
        max_idle=300,
        # psycopg_pool retries a failed connect after 1, 2, 4, 8... s until this runs out,
        # then gives the attempt up, and _keep_trying starts a new one at once. Its default
        # (300 s) let the delay grow to 8-16 s during a failover, so the first connect after
        # the election could come that late.
        reconnect_timeout=reconnect_timeout,
        reconnect_failed=_keep_trying,
    )


class Database:
    def __init__(
        self,
        primary_dsn: str,
        replica_dsn: str | None,
        min_size: int = 1,
        max_size: int = 10,
        replica_wait_seconds: float = 0.5,
        replica_retry_seconds: float = 5.0,
        timeout: float = 5.0,
        deadline: float = 0.0,
        reconnect_timeout: float = 2.0,
    ) -> None:
        self.primary = _pool(primary_dsn, min_size, max_size, "primary", timeout, reconnect_timeout)
        self.replica = (
            _pool(replica_dsn, min_size, max_size, "replica", timeout, reconnect_timeout)
            if replica_dsn
            else None
        )
        # Longest a connection stays checked out before it is severed (0: no limit).
        self.deadline = deadline
        self.replica_wait_seconds = replica_wait_seconds
        self.replica_retry_seconds = replica_retry_seconds
        # While the replica is failing, reads go to the primary until this moment.
        self._replica_down_until = 0.0
        self._checks: set[asyncio.Task[None]] = set()

    @property
    def replica_state(self) -> str:
        if self.replica is None:
            return "none"
        return "ok" if time.monotonic() >= self._replica_down_until else "failed"

    def _suspect(self, pool: AsyncConnectionPool[Conn], exc: BaseException) -> None:
        """A connection of this pool failed: test every idle one now (failover, restart), so
        the stale ones are replaced before requests pick them."""
        if isinstance(exc, psycopg.OperationalError) and not self._checks:
            task = asyncio.get_running_loop().create_task(pool.check())
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

    def _replica_failed(self, exc: BaseException) -> None:
        if self.replica_state == "ok":
            logger.warning(
                "replica unavailable, reading from the primary for {} s: {}",
                self.replica_retry_seconds,
                exc,
            )
        self._replica_down_until = time.monotonic() + self.replica_retry_seconds

    async def open(self) -> None:
        await self.primary.open(wait=False)
        if self.replica is not None:
            await self.replica.open(wait=False)

    async def close(self) -> None:
        await self.primary.close()
        if self.replica is not None:
            await self.replica.close()

    async def _getconn(self, pool: AsyncConnectionPool[Conn], timeout: float | None = None) -> Conn:
        """A pooled connection the server has not closed: stale ones (the server restarted or
        failed over) are dropped at checkout, at no round trip, and the rest of the pool is
        checked in the background, so they do not each fail a request."""
        for _ in range(pool.max_size + 1):
            conn = await pool.getconn(timeout)
            if _still_open(conn):
                return conn
            await conn.close()
            await pool.putconn(conn)  # closed: the pool discards it and opens a new one
            self._suspect(pool, psycopg.OperationalError("stale pooled connection"))
        return await pool.getconn(timeout)

    @asynccontextmanager
    async def transaction(self, deadline: float | None = None) -> AsyncIterator[Conn]:
        """A transaction on the primary; `deadline` replaces the request deadline (for a
        long maintenance statement, which sets its own statement_timeout)."""
        async with self._on(self.primary, deadline) as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def writer(self, *, within: float | None = None) -> AsyncIterator[Conn]:
        """A connection on the primary in autocommit: each statement is its own transaction
        (for a change made by one statement: no BEGIN or COMMIT round trip). `within`: the
        seconds this checkout may last in all, the wait for a connection included (see
        `_on`)."""
        async with self._on(self.primary, within=within) as conn:
            yield conn

    @asynccontextmanager
    async def reader(self, *, fresh: bool = False) -> AsyncIterator[Conn]:
        """A connection for reads; `fresh` forces the primary (the caller wrote recently).

        Lag-tolerant reads use the replica while it answers; when it cannot hand out a
        connection within `replica_wait_seconds`, or a read on it fails, reads go to the
        primary for `replica_retry_seconds`."""
        replica = self.replica
        if fresh or replica is None or self.replica_state != "ok":
            async with self._on(self.primary) as conn:
                yield conn
            return
        try:
            conn = await self._getconn(replica, self.replica_wait_seconds)
        except (PoolTimeout, psycopg.OperationalError) as exc:
            self._replica_failed(exc)
            async with self._on(self.primary) as conn:
                yield conn
            return
        timer = self._watch(conn)
        try:
            yield conn
        except psycopg.OperationalError as exc:
            self._replica_failed(exc)
            self._suspect(replica, exc)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            await replica.putconn(conn)

    async def read(self, work: Callable[[Conn], Awaitable[T]], *, fresh: bool = False) -> T:
        """Run `work`, which only reads, on a `reader()` connection. If that connection is lost
        under it (the server terminated the backend, restarted, failed over: the connection
        is broken afterwards), run it once more on a fresh connection. A read has no effect to
        repeat, so the client gets its answer instead of a 503. A query that merely failed
        (statement timeout, bad data) on a live connection is not repeated."""
        return await self._once_more_if_lost(
            lambda _: self.reader(fresh=fresh), work, "read", READ_RETRIES, bounded=False
        )

    async def write(self, work: Callable[[Conn], Awaitable[T]], *, retry: bool = False) -> T:
        """Run `work`, a change, on a `writer()` connection (autocommit).

        Without `retry`, a connection lost under it raises: whether the change committed is
        unknown, and the client is answered 503. With `retry`, which the caller passes only
        for a change that is safe to repeat (an order with its Idempotency-Key: the repeat
        finds the key's record and returns the first response if the first attempt
        committed, else it makes the change once), the work runs once more on a fresh
        connection from the pool, which waits for a primary as for any request (a
        switchover's gap of a second or two). As in `read`, only a lost connection is
        retried: a statement that failed on a live one (statement timeout, constraint) is
        not, and a second loss raises.

        Deadline: both attempts together stay within the request deadline (`deadline`),
        counted from the start of the first attempt, its wait for a connection included. The
        retry gets what is left: it waits for a connection at most that long (or the pool's
        timeout, if shorter) and its connection is shut under it when the rest runs out. With
        less than WRITE_RETRY_MIN_SECONDS left no retry is made (the first attempt already
        used the deadline, e.g. it was cut off by it). With no deadline (0) the retry has the
        limits of any request."""
        if not retry:
            async with self.writer() as conn:
                return await work(conn)
        return await self._once_more_if_lost(
            lambda within: self.writer(within=within), work, "write", WRITE_RETRIES, bounded=True
        )

    async def _once_more_if_lost(
        self,
        session: Callable[[float | None], AbstractAsyncContextManager[Conn]],
        work: Callable[[Conn], Awaitable[T]],
        kind: str,
        retries: Counter,
        *,
        bounded: bool,
    ) -> T:
        """`work` on `session(None)`'s connection; if that connection is lost under it (see
        `_lost`), once more on `session(within)`'s. `bounded`: the two share the request
        deadline (`within` is its rest; see `write`), else `within` is None."""
        started = time.monotonic()
        used: Conn | None = None
        within: float | None = None
        try:
            async with session(None) as conn:
                used = conn
                return await work(conn)
        except psycopg.OperationalError as exc:
            if not _lost(used):
                raise
            if bounded and self.deadline:
                within = self.deadline - (time.monotonic() - started)
                if within < WRITE_RETRY_MIN_SECONDS:
                    logger.warning(
                        "connection lost during a {}, not retried: {:.1f} s of the {} s"
                        " deadline left: {}",
                        kind,
                        max(within, 0.0),
                        self.deadline,
                        exc,
                    )
                    raise
            retries.inc()
            logger.warning("connection lost during a {}, retrying on a fresh one: {}", kind, exc)
        async with session(within) as conn:
            return await work(conn)

    @asynccontextmanager
    async def _on(
        self,
        pool: AsyncConnectionPool[Conn],
        deadline: float | None = None,
        *,
        within: float | None = None,
    ) -> AsyncIterator[Conn]:
        """A connection of `pool`, severed after `deadline` (default: the request deadline).
        `within` bounds the checkout as a whole instead: the wait for a connection (at most
        the pool's timeout) and then the deadline share it."""
        if within is None:
            conn = await self._getconn(pool)
        else:
            end = time.monotonic() + within
            conn = await self._getconn(pool, min(pool.timeout, within))
            # Not 0, which _watch reads as "no deadline": a wait that took all of it leaves
            # the connection an instant.
            deadline = max(end - time.monotonic(), 0.001)
        timer = self._watch(conn, deadline)
        try:
            yield conn
        except psycopg.OperationalError as exc:
            self._suspect(pool, exc)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            await pool.putconn(conn)

    def _watch(self, conn: Conn, deadline: float | None = None) -> asyncio.TimerHandle | None:
        seconds = self.deadline if deadline is None else deadline
        if not seconds:
            return None
        return asyncio.get_running_loop().call_later(seconds, _sever, conn, seconds)


async def fetch_one(conn: Conn, sql: str, params: Params = ()) -> Row | None:
    with _span(sql):
        cur = await conn.execute(sql, params)
        return await cur.fetchone()


async def fetch_all(conn: Conn, sql: str, params: Params = ()) -> list[Row]:
    with _span(sql):
        cur = await conn.execute(sql, params)
        return await cur.fetchall()


async def execute(conn: Conn, sql: str, params: Params = ()) -> int:
    with _span(sql):
        cur = await conn.execute(sql, params)
        return cur.rowcount


_NO_SPAN = contextlib.nullcontext()


def _span(sql: str) -> contextlib.AbstractContextManager[object]:
    """The statement's client span, only with an exporter (setup_tracing): without one, the
    no-op span still cost a context attach and detach per statement."""
    if not tracing_enabled():
        return _NO_SPAN
    return tracer.start_as_current_span(
        _span_name(sql),
        kind=SpanKind.CLIENT,
        attributes={"db.system": "postgresql", "db.statement": sql},
    )


def _span_name(sql: str) -> str:
    return "SQL " + sql.lstrip().split(None, 1)[0].upper()
