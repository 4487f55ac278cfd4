from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from zapora.api.deps import ServicesDep
from zapora.api.problems import problem
from zapora.services.health import INFORMATIONAL, readiness

router = APIRouter(tags=["health"])


@router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/health/ready",
    response_model=None,
    responses={
        200: {"description": "Ready: every check is ok."},
        503: {"description": "Not ready; `checks` names the failed ones."},
    },
)
async def ready(services: ServicesDep) -> Any:
    checks = await readiness(services.infra)
    failed = sorted(
        name for name, state in checks.items() if state != "ok" and name not in INFORMATIONAL
    )
    if failed:
        return problem(503, "Not ready: " + ", ".join(failed) + ".", checks=checks)
    return {"status": "ok", "checks": checks}
