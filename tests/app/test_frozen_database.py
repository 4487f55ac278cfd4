"""A frozen PostgreSQL (SIGSTOP of the postmaster and every backend: the kernel still
accepts and acknowledges, nothing answers, no TCP timeout ever fires on loopback) costs a
request a bounded wait and a 503 + Retry-After, not a hang; after SIGCONT requests succeed
again with no restart. The API's conninfo carries the keepalives, tcp_user_timeout and
statement_timeout it documents."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from fastapi.testclient import TestClient
from psycopg_pool import PoolTimeout

from zapora.infra.db import Database
from zapora.services.context import Infra
from zapora.settings import Settings

from . import servers as srv
from .conftest import app_for, login, make_settings, register


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The parent pid is the second field after the parenthesised command name.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@contextmanager
def frozen(postmaster: int) -> Iterator[None]:
    pids = [postmaster, *_children(postmaster)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_the_conninfo_carries_keepalives_and_timeouts(
    servers: srv.Servers, secret_file: Path
) -> None:
    settings = make_settings(servers, secret_file, db_statement_timeout_ms=1234)
    infra = Infra.from_settings(settings)
    conninfo = psycopg.conninfo.conninfo_to_dict(infra.db.primary.conninfo)
    assert conninfo["keepalives"] == "1"
    assert conninfo["keepalives_idle"] == str(settings.db_keepalives_idle_seconds)
    assert conninfo["tcp_user_timeout"] == str(settings.db_tcp_user_timeout_ms)
    with psycopg.connect(infra.db.primary.conninfo) as conn:
        row = conn.execute("SHOW statement_timeout").fetchone()
    assert row is not None and row[0] == "1234ms"
    # What the operator's string sets wins; its other options are kept.
    own = servers.primary.dsn() + "?keepalives_idle=30&options=-c%20statement_timeout%3D777"
    mine = Infra.from_settings(make_settings(servers, secret_file, database_url=own))
    conninfo = psycopg.conninfo.conninfo_to_dict(mine.db.primary.conninfo)
    assert conninfo["keepalives_idle"] == "30"
    assert conninfo["options"] == "-c statement_timeout=777"
    assert conninfo["keepalives_count"] == str(settings.db_keepalives_count)


def test_a_frozen_database_is_a_quick_503_and_recovers_after(
    servers: srv.Servers, secret_file: Path, db: psycopg.Connection[dict[str, Any]]
) -> None:
    settings = make_settings(
        servers,
        secret_file,
        db_statement_timeout_ms=1000,
        db_request_deadline_seconds=2,
        db_pool_timeout_seconds=2,
    )
    assert servers.primary.proc is not None
    with TestClient(app_for(settings)) as client:
        register(client, "frost@example.com")
        me = {"Authorization": f"Bearer {login(client, 'frost@example.com')['access_token']}"}
        assert client.get("/users/me", headers=me).status_code == 200
        with frozen(servers.primary.proc.pid):
            started = time.monotonic()
            r = client.get("/users/me", headers=me)
            waited = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert int(r.headers["Retry-After"]) >= 1
        # The deadline (2 s) and, for the read's one retry on a fresh connection, the pool's
        # wait (2 s): bounded, where it waited for as long as the freeze lasted before.
        assert waited < 10, f"the request waited {waited:.1f} s on a frozen database"
        deadline = time.monotonic() + 15
        while client.get("/users/me", headers=me).status_code != 200:
            assert time.monotonic() < deadline, "no recovery within 15 s of SIGCONT"
            time.sleep(0.2)


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _first_connection_after_outage(
    servers: srv.Servers, reconnect_timeout: float, outage_s: float, *, requests: bool
) -> float:
    """Seconds from the database's address answering again (a TCP forwarder to the test
    server, as HAProxy passes a new primary through) to the first request served (with a
    request every 0.2 s all along, as clients retrying do) or, with `requests` false, to
    the first connection in the pool (no request at all: the pool tries on its own)."""
    port = srv.free_port()
    dsn = servers.primary.dsn().replace(f":{servers.primary.port}/", f":{port}/")
    db = Database(dsn, None, 1, 4, timeout=0.5, reconnect_timeout=reconnect_timeout)

    async def bridge(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", servers.primary.port)
        await asyncio.gather(_forward(client_r, server_w), _forward(server_r, client_w))

    await db.open()
    listener = None
    try:
        started = time.monotonic()
        while True:
            if listener is None and time.monotonic() - started >= outage_s:
                listener = await asyncio.start_server(bridge, "127.0.0.1", port)
                back = time.monotonic()
            if not requests:
                if listener is not None and db.primary.get_stats().get("pool_available", 0):
                    return time.monotonic() - back
            else:
                try:
                    async with db.writer() as conn:
                        await conn.execute("SELECT 1")
                    if listener is not None:
                        return time.monotonic() - back
                except (PoolTimeout, psycopg.OperationalError):
                    pass
            assert time.monotonic() - started < outage_s + 20, "no connection 20 s after"
            await asyncio.sleep(0.2 if requests else 0.05)
    finally:
        await db.close()
        if listener is not None:
            listener.close()


def test_the_pool_reconnects_within_a_second_or_two_of_an_outage(servers: srv.Servers) -> None:
    """After 4 s with nothing at the database's address (a failover with no primary yet),
    the pool connects within ~1 s of the address answering again, whether requests wait
    for it or not. psycopg_pool's default reconnect_timeout (300 s) keeps doubling its
    delay instead (1, 2, 4 s...): the same outage cost 2.3 s more, a failover's 10-20 s up to
    8-16 s; a short one alone gives up and leaves the pool empty until a request comes."""
    reconnect = Settings.model_fields["db_reconnect_timeout_seconds"].default
    for requests in (True, False):
        waited = asyncio.run(
            _first_connection_after_outage(servers, reconnect, 4.0, requests=requests)
        )
        print(f"requests={requests}: connected {waited:.2f} s after the database came back")
        assert waited < 1.5, f"connected {waited:.1f} s after the database came back"
