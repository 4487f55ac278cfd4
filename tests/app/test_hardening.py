"""The smaller defects of issue 12: docs off in production, binary JWT secrets refused at
start, failed logins audited without what was typed, tracebacks in the 500 log line, the
worker's own /metrics listener and the dead-letter stream for poison events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from fastapi import APIRouter
from fastapi.testclient import TestClient

from zapora.api import problems
from zapora.infra.logging import setup_logging
from zapora.services.context import Infra
from zapora.services.events import OrderEventConsumer
from zapora.settings import Settings

from . import servers as srv
from .conftest import app_for, make_settings


def test_docs_off_in_production_unless_enabled(servers: srv.Servers, secret_file: Path) -> None:
    for overrides, expected in (
        ({"environment": "production"}, 404),
        ({"environment": "production", "docs_enabled": True}, 200),
        ({"environment": "test"}, 200),
    ):
        app = app_for(make_settings(servers, secret_file, **overrides))
        with TestClient(app) as c:
            assert c.get("/openapi.json").status_code == expected, overrides
            assert c.get("/docs").status_code == expected, overrides
            assert app.openapi()["paths"]  # `zapora openapi` still prints it


def test_binary_jwt_secret_is_refused_at_start(tmp_path: Path) -> None:
    binary = tmp_path / "jwt.bin"
    binary.write_bytes(bytes(range(256)) * 2)  # random-looking, not UTF-8
    # pydantic wraps the validator's error; the message names the cause.
    with pytest.raises(ValueError, match="must hold text"):
        Settings(environment="production", jwt_secret_file=binary)


def test_failed_login_audit_stores_a_keyed_hash(
    client: TestClient, db: psycopg.Connection[dict[str, Any]]
) -> None:
    typed = "MyS3cretPassw0rd"  # typed into the e-mail field
    r = client.post("/auth/login", json={"email": typed, "password": "whatever"})
    assert r.status_code == 401
    rows = db.execute("SELECT details::text AS d FROM audit_events").fetchall()
    assert rows and all(typed not in row["d"] and typed.lower() not in row["d"] for row in rows)
    details = json.loads(rows[0]["d"])
    assert len(details["email_hash"]) == 32
    # Keyed: the same input hashes alike (so lockouts can be correlated), not to a plain hash.
    client.post("/auth/login", json={"email": typed.upper(), "password": "whatever"})
    hashes = {
        json.loads(r["d"])["email_hash"]
        for r in db.execute("SELECT details::text AS d FROM audit_events")
    }
    assert len(hashes) == 1


def test_500_is_problem_json_and_logged_with_traceback(
    servers: srv.Servers, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = app_for(make_settings(servers, secret_file))
    boom = APIRouter()

    @boom.get("/boom")
    async def explode() -> None:
        raise RuntimeError("kaboom")

    app.include_router(boom)
    setup_logging("INFO")
    with TestClient(app, raise_server_exceptions=False) as c:
        capsys.readouterr()
        r = c.get("/boom")
    assert r.status_code == 500
    assert r.headers["content-type"] == problems.PROBLEM_JSON
    assert "kaboom" not in r.text
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    errors = [x for x in lines if x["level"] == "ERROR"]
    assert errors and "RuntimeError: kaboom" in errors[0]["traceback"]
    assert "explode" in errors[0]["traceback"]


def test_worker_serves_its_own_metrics(servers: srv.Servers, secret_file: Path) -> None:
    port = srv.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "zapora.cli", "worker"],
        env={
            **os.environ,
            "ZAPORA_ENVIRONMENT": "test",
            "ZAPORA_DATABASE_URL": servers.primary.dsn(),
            "ZAPORA_REDIS_URL": servers.redis_url,
            "ZAPORA_JWT_SECRET_FILE": str(secret_file),
            "ZAPORA_WORKER_METRICS_PORT": str(port),
            "ZAPORA_METRICS_HOST": "127.0.0.1",
        },
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert "zapora_order_events_processed_total" in text
        assert "zapora_order_events_dead_lettered_total" in text
    finally:
        proc.terminate()
        proc.wait(15)


async def _poison_run(settings: Settings) -> tuple[int, int]:
    infra = Infra.from_settings(settings)
    await infra.open()
    try:
        consumer = OrderEventConsumer(infra, "poisoned")
        await consumer.ensure_group()
        # A malformed entry: processing it fails on every delivery.
        await infra.redis.xadd(settings.order_stream, {"event": "order.created"})
        for _ in range(settings.worker_max_deliveries + 2):
            with contextlib.suppress(Exception):  # the worker loop logs and carries on
                await consumer.run_once(block_ms=50)
            await asyncio.sleep(0.02)
        pending = await infra.redis.xpending(settings.order_stream, settings.worker_group)
        dead = await infra.redis.xlen(consumer.dead_stream)
        return int(pending["pending"]), int(dead)
    finally:
        await infra.close()


def test_poison_event_is_dead_lettered(
    servers: srv.Servers, secret_file: Path, rds: redis.Redis
) -> None:
    settings = make_settings(
        servers, secret_file, worker_max_deliveries=3, worker_reclaim_idle_ms=1
    )
    pending, dead = asyncio.run(_poison_run(settings))
    assert (pending, dead) == (0, 1)
