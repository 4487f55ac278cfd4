from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from zapora.api.deps import ServicesDep
from zapora.api.problems import problem
from zapora.infra import metrics
from zapora.services.health import readiness

router = APIRouter(tags=["health"])


@router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready", response_model=None)
async def ready(services: ServicesDep) -> Any:
    checks = await readiness(services.infra)
    failed = sorted(name for name, state in checks.items() if state != "ok")
    if failed:
        return problem(503, "Not ready: " + ", ".join(failed) + ".", checks=checks)
    return {"status": "ok", "checks": checks}


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
