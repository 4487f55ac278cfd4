"""A frozen PostgreSQL (SIGSTOP of the postmaster and every backend: the kernel still
accepts and acknowledges, nothing answers, no TCP timeout ever fires on loopback) costs a
request a bounded wait and a 503 + Retry-After, not a hang; after SIGCONT requests succeed
again with no restart. The API's conninfo carries the keepalives, tcp_user_timeout and
statement_timeout it documents."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from zapora.services.context import Infra

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
