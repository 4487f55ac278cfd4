"""Readiness: the primary database, Redis and the schema revision."""

from __future__ import annotations

from loguru import logger

from zapora.infra.db import fetch_one
from zapora.migrate import head_revision
from zapora.services.context import Infra

_HEAD = head_revision()


async def readiness(infra: Infra) -> dict[str, str]:
    """Each check's state: "ok", "failed", or what is wrong with the schema."""
    checks: dict[str, str] = {}
    try:
        async with infra.db.primary.connection(timeout=2) as conn:
            row = await fetch_one(conn, "SELECT version_num FROM alembic_version")
        revision = row["version_num"] if row else None
        checks["database"] = "ok"
        checks["migrations"] = "ok" if revision == _HEAD else f"at {revision}, head is {_HEAD}"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        logger.warning("readiness: database check failed: {}", exc)
        checks["database"] = "failed"
        checks["migrations"] = "unknown"
    try:
        await infra.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        logger.warning("readiness: redis check failed: {}", exc)
        checks["redis"] = "failed"
    return checks
