"""Readiness: the primary database, Redis and the schema revision (the replica is reported)."""

from __future__ import annotations

from loguru import logger

from zapora.infra.db import fetch_one
from zapora.migrate import head_revision, known_revisions
from zapora.services.context import Infra

# Checks whose failure is reported but does not make the process unready.
INFORMATIONAL = frozenset({"replica"})
_HEAD = head_revision()
_KNOWN = known_revisions()


def schema_state(revision: str | None) -> str:
    if revision == _HEAD or (revision is not None and revision not in _KNOWN):
        # At head, or ahead: a newer release migrated (expand only), this one still works.
        return "ok"
    return f"at {revision}, head is {_HEAD}"


async def readiness(infra: Infra) -> dict[str, str]:
    """Each check's state: "ok", "failed", or what is wrong with the schema."""
    checks: dict[str, str] = {}
    try:
        async with infra.db.primary.connection(timeout=2) as conn:
            # A fresh database has no alembic_version yet: reachable, schema not migrated.
            present = await fetch_one(
                conn, "SELECT to_regclass('alembic_version') IS NOT NULL AS present"
            )
            row = None
            if present and present["present"]:
                row = await fetch_one(conn, "SELECT version_num FROM alembic_version")
        revision = row["version_num"] if row else None
        checks["database"] = "ok"
        checks["migrations"] = schema_state(revision)
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        logger.warning("readiness: database check failed: {}", exc)
        checks["database"] = "failed"
        checks["migrations"] = "unknown"
    if infra.db.replica is not None:
        # Reported, never failing the pod: reads fall back to the primary without it.
        try:
            async with infra.db.replica.connection(timeout=1) as conn:
                await fetch_one(conn, "SELECT 1 AS one")
            checks["replica"] = "ok"
        except Exception as exc:  # noqa: BLE001
            logger.warning("readiness: replica check failed: {}", exc)
            checks["replica"] = "failed"
    try:
        await infra.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        logger.warning("readiness: redis check failed: {}", exc)
        checks["redis"] = "failed"
    return checks
