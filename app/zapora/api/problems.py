"""RFC 9457 problem details for every error, validation errors included; never a traceback."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from loguru import logger
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from zapora.infra.errors import ANY_UNAVAILABLE
from zapora.services.common import (
    BadRequest,
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    Unauthorized,
)

PROBLEM_JSON = "application/problem+json"

_STATUS: dict[type[DomainError], int] = {
    NotFound: 404,
    Conflict: 409,
    Forbidden: 403,
    Unauthorized: 401,
    Invalid: 422,
    RateLimited: 429,
    BadRequest: 400,
}


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON


def problem(
    status: int,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> ProblemResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    body.update(extra)
    return ProblemResponse(body, status_code=status, headers=headers)


async def _domain(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, DomainError)
    return domain_problem(exc)


def domain_problem(exc: DomainError) -> ProblemResponse:
    """The answer to a domain error."""
    status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 400)
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return problem(status, exc.detail, headers or None)


async def _validation(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    # Inputs are not echoed back: they may be huge or hold what the client should not see.
    errors = [
        {
            "loc": [str(part) for part in err.get("loc", ())],
            "msg": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in exc.errors()[:20]
    ]
    return problem(422, "The request is not valid.", errors=errors)


def allowed_methods(request: Request) -> str | None:
    """Every method some route serves on this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    scope = {**request.scope, "method": "*"}
    for router in getattr(request.app.state, "routers", ()):
        for route in router.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                methods.update(getattr(route, "methods", None) or ())
    methods.discard("HEAD")
    return ", ".join(sorted(methods)) or None


async def _http(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        allow = allowed_methods(request)
        if allow:
            headers["Allow"] = allow
    return problem(exc.status_code, detail, headers or None)


# A dependency that is down or unreachable: the client should retry later, not report a bug.
UNAVAILABLE = ANY_UNAVAILABLE
# 1 s: what makes a dependency unavailable is a failover or a restart, which ends at a
# moment the API cannot foresee, and the request itself already waited (the pool's
# timeout, 5 s). With 5 s, clients that honour it waited up to 5 s more after a failover's
# new primary was up (bench/failover.py, docs/failover.md); the edge's rate limit bounds
# what a client that retries every second costs.
RETRY_AFTER_SECONDS = 1


def unavailable(detail: str = "A service this request needs is unavailable.") -> ProblemResponse:
    return problem(503, detail, {"Retry-After": str(RETRY_AFTER_SECONDS)})


def for_exception(exc: BaseException, path: str) -> ProblemResponse:
    """The answer to an exception no handler took: 503 for a dependency, else 500."""
    if isinstance(exc, UNAVAILABLE):
        logger.opt(exception=exc).warning("dependency unavailable on {}", path)
        return unavailable()
    logger.opt(exception=exc).error("unhandled error on {}", path)
    return problem(500, "An unexpected error occurred.")


async def _dependency(request: Request, exc: Exception) -> ProblemResponse:
    return for_exception(exc, request.url.path)


async def _unexpected(request: Request, exc: Exception) -> ProblemResponse:
    return for_exception(exc, request.url.path)


def install(app: FastAPI) -> None:
    for kind in UNAVAILABLE:
        app.add_exception_handler(kind, _dependency)
    app.add_exception_handler(DomainError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
