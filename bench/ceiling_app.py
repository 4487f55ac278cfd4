"""The ceiling: one constant-JSON route, served by the same gunicorn settings as the API."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/constant")
async def constant() -> dict[str, str]:
    return {"status": "ok"}


def create_app() -> FastAPI:
    return app
