from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from loguru import logger

from zapora.api.deps import ServicesDep
from zapora.api.problems import problem
from zapora.infra import metrics
from zapora.infra.db import fetch_one
from zapora.migrate import head_revision

router = APIRouter(tags=["health"])
_HEAD = head_revision()


@router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready", response_model=None)
async def ready(services: ServicesDep) -> Any:
    checks: dict[str, str] = {}
    revision: str | None = None
    try:
        async with services.infra.db.primary.connection(timeout=2) as conn:
            row = await fetch_one(conn, "SELECT version_num FROM alembic_version")
            revision = row["version_num"] if row else None
        checks["database"] = "ok"
        checks["migrations"] = "ok" if revision == _HEAD else f"at {revision}, head is {_HEAD}"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        logger.warning("readiness: database check failed: {}", exc)
        checks["database"] = "failed"
        checks["migrations"] = "unknown"
    try:
        await services.infra.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        logger.warning("readiness: redis check failed: {}", exc)
        checks["redis"] = "failed"
    failed = sorted(name for name, state in checks.items() if state != "ok")
    if failed:
        return problem(503, "Not ready: " + ", ".join(failed) + ".", checks=checks)
    return {"status": "ok", "checks": checks}


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
