"""The FastAPI application factory (gunicorn: `zapora.api.app:create_app()`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from zapora.api import openapi, problems
from zapora.api.fast_path import CachedMenuItems
from zapora.api.middleware import RequestContextMiddleware
from zapora.api.routers import audit, auth, health, menus, orders, users
from zapora.infra.logging import setup_logging
from zapora.infra.tracing import setup_tracing
from zapora.services.context import Infra
from zapora.services.registry import Services
from zapora.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    setup_logging(settings.log_level)
    setup_tracing(settings.service_name, settings.otlp_endpoint)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        infra = Infra.from_settings(settings)
        await infra.open()
        services = Services.build(infra)
        app.state.services = services
        services.menus.local.start()
        try:
            yield
        finally:
            await services.menus.local.stop()
            await infra.close()

    # FastAPI's native OpenTelemetry support makes the HTTP server span (W3C traceparent
    # honoured) once setup_tracing installed a provider; metrics and logs are our own.
    app = FastAPI(
        title="Zapora API",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if settings.docs_on else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_on else None,
        telemetry={"tracing": settings.otlp_endpoint is not None, "metrics": False, "logs": False},
    )
    problems.install(app)
    # Added first, so it runs inside RequestContextMiddleware: a cached list answered from
    # this process's copy (api/fast_path.py) is still counted and logged.
    app.add_middleware(CachedMenuItems)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        trusted_proxy_hops=settings.trusted_proxy_hops,
    )
    # Starlette matches routes in order: the hottest paths first. Orders lead: a cached
    # GET /menu-items never reaches routing (api/fast_path.py), while every order request
    # would otherwise be compared against each menu route first.
    routers = [module.router for module in (orders, menus, health, auth, users, audit)]
    for router in routers:
        app.include_router(router)
    app.state.routers = routers
    openapi.install(app, routers)
    return app
