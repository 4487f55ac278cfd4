"""The OpenAPI document, completed with what every operation can answer besides success.

FastAPI documents the success response and a JSON validation body that the API never sends.
This module replaces that with the problem+json schema the API does send and adds, per
operation, the error statuses its dependencies and rules produce: 401 when it needs a bearer
token, 403 when it needs a role, 404 when it names a resource, 413 when it takes a body, 422
when it takes input, 503 (with Retry-After) when a database or Redis is unavailable, and on
every operation the edge's own answers (docs/edge.md): 403 from its WAF (ModSecurity with the
OWASP CRS) and 429 from its per-address rate limit. Routes declare their own business outcomes
(409, ...) with `errors(...)`."""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

PROBLEM_JSON = "application/problem+json"
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; every error response has this body.",
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "errors": {
            "description": "Validation errors (422): where and what, never the input.",
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {"type": "array", "items": {"type": "string"}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
        "checks": {
            "description": "Readiness checks (GET /health/ready) by name.",
            "type": "object",
            "additionalProperties": {"type": "string"},
        },
    },
}

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_DESCRIPTIONS = {
    400: "The body cannot be read (e.g. it is not UTF-8).",
    401: "No bearer token, or it is invalid, expired or revoked.",
    403: "The caller's role does not allow this.",
    404: "The resource does not exist (or is not the caller's).",
    409: "The request conflicts with the resource's current state.",
    413: "The body is larger than the configured limit.",
    422: "The request is not valid: its fields, or a rule the body breaks.",
    429: "Too many requests; wait Retry-After seconds.",
    503: "A database or Redis is unavailable; retry after Retry-After seconds.",
}


BAD_CURSOR = (
    "The cursor was not issued by this API for this list and filter (altered, truncated, "
    "or taken from another list); start again without a cursor."
)


def errors(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: the business outcomes it can answer with (409, 429, ...).

    A keyword `s409="..."` overrides the default description of that status."""
    return {
        status: {"description": descriptions.get(f"s{status}", _DESCRIPTIONS[status])}
        for status in statuses
    }


def _dependency_calls(route: APIRoute) -> set[str]:
    names: set[str] = set()
    stack = [route.dependant]
    while stack:
        dependant = stack.pop()
        if dependant.call is not None:
            names.add(getattr(dependant.call, "__qualname__", ""))
        stack.extend(dependant.dependencies)
    return names


_EDGE_403 = "The edge's WAF (ModSecurity with the OWASP CRS) refused the request."
_EDGE_429 = "Too many requests from this address at the edge; wait Retry-After seconds."
_EDGE = {403: _EDGE_403, 429: _EDGE_429}


def _generic_statuses(
    route: APIRoute, method: str, operation: dict[str, Any]
) -> dict[int, str | None]:
    """The statuses every such operation can answer, with a description where the default
    does not fit."""
    calls = _dependency_calls(route)
    # Clients reach the API through the edge, which answers these itself on any operation.
    statuses: dict[int, str | None] = {503: None, 403: _EDGE_403, 429: _EDGE_429}
    if "current_actor" in calls:
        statuses[401] = None
        if method != "GET":
            statuses[429] = "Too many writes by this user; wait Retry-After. Or: " + _EDGE_429
    if any(name.startswith("_require") for name in calls):
        statuses[403] = "The caller's role does not allow this. Or: " + _EDGE_403
    if operation.get("parameters") or operation.get("requestBody"):
        statuses[422] = None
    if "{" in route.path:
        statuses[404] = None
    if operation.get("requestBody"):
        statuses[400] = None
        statuses[413] = None
    return statuses


def _problem_response(status: int, description: str | None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description or _DESCRIPTIONS.get(status) or HTTPStatus(status).phrase,
        "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}},
    }
    if status in (429, 503):
        response["headers"] = _RETRY_AFTER
    return response


def build(app: FastAPI, routers: Sequence[APIRouter]) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Problem"] = PROBLEM_SCHEMA
    # The routers' own routes: the app's list nests included routers in framework internals.
    for route in (route for router in routers for route in router.routes):
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            operation = doc["paths"][route.path_format][method.lower()]
            responses: dict[str, Any] = operation["responses"]
            for status, text in _generic_statuses(route, method, operation).items():
                own = responses.setdefault(str(status), {"description": text} if text else {})
                edge = _EDGE.get(status)
                if edge and edge not in own.get("description", edge):
                    # The route's own reason for this status, and the edge's.
                    own["description"] = f"{own['description']} Or: {edge}"
            for code, response in list(responses.items()):
                if code.isdigit() and int(code) >= 400:
                    description = response.get("description")
                    if description in (None, "", "Validation Error"):
                        description = None
                    responses[code] = _problem_response(int(code), description)
            operation["responses"] = dict(sorted(responses.items()))
    return doc


def install(app: FastAPI, routers: Sequence[APIRouter]) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app, routers)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
