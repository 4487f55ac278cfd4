"""The ceiling: one route answering the same bytes as the cached GET /menu-items list (read
from BENCH_CEILING_PAYLOAD), with the API's telemetry settings, under the same gunicorn
settings: the cost of the framework and server alone for that response."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response

_PAYLOAD_FILE = os.environ.get("BENCH_CEILING_PAYLOAD")
PAYLOAD = Path(_PAYLOAD_FILE).read_bytes() if _PAYLOAD_FILE else b'{"status":"ok"}'

# As in zapora.api.app.create_app without ZAPORA_OTLP_ENDPOINT.
app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})


@app.get("/constant")
async def constant() -> Response:
    return Response(PAYLOAD, media_type="application/json")


@app.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


def create_app() -> FastAPI:
    return app
