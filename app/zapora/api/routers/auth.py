from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from zapora.api.deps import CurrentActor, OriginDep, ServicesDep
from zapora.api.openapi import errors
from zapora.api.schemas import LoginIn, RefreshIn, RegisterIn, TokenOut, UserOut
from zapora.api.strict_json import StrictJSONRoute, strict_loads
from zapora.services.auth import TokenPair
from zapora.services.common import Invalid, Role

router = APIRouter(prefix="/auth", tags=["auth"], route_class=StrictJSONRoute)

_LOGIN_JSON: dict[str, Any] = LoginIn.model_json_schema()
# The form fields carry the JSON fields' constraints (length, no NUL), taken from the one model
# so the two bodies cannot drift apart.
_LOGIN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _LOGIN_JSON},
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "username": {**_LOGIN_JSON["properties"]["email"], "title": "Username"},
                        "password": _LOGIN_JSON["properties"]["password"],
                    },
                    "required": ["username", "password"],
                }
            },
        },
    }
}


def _pair(pair: TokenPair) -> TokenOut:
    return TokenOut(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        token_type=pair.token_type,
        expires_in=pair.expires_in,
    )


@router.post(
    "/register",
    status_code=201,
    response_model=UserOut,
    responses=errors(409, s409="This e-mail address is already registered."),
)
async def register(body: RegisterIn, services: ServicesDep) -> Any:
    return await services.auth.register(body.email, body.password, body.full_name, Role.customer)


async def _login_body(request: Request) -> LoginIn:
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            return LoginIn(
                email=str(form.get("username", "")), password=str(form.get("password", ""))
            )
        return LoginIn.model_validate(strict_loads(await request.body()))
    except (ValidationError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise Invalid(
            "Send e-mail and password as JSON, or username and password as a form."
        ) from exc


@router.post(
    "/login",
    response_model=TokenOut,
    openapi_extra=_LOGIN_BODY,
    responses=errors(
        401,
        403,
        429,
        s401="Incorrect e-mail or password.",
        s403="The account is deactivated.",
        s429="Too many failed sign-in attempts for this account or client address.",
    ),
)
async def login(request: Request, services: ServicesDep, origin: OriginDep) -> TokenOut:
    body = await _login_body(request)
    return _pair(await services.auth.login(body.email, body.password, origin))


@router.post(
    "/refresh",
    response_model=TokenOut,
    responses=errors(401, s401="The refresh token is invalid, expired, revoked or reused."),
)
async def refresh(body: RefreshIn, services: ServicesDep, origin: OriginDep) -> TokenOut:
    return _pair(await services.auth.refresh(body.refresh_token, origin))


@router.post("/logout", status_code=204)
async def logout(actor: CurrentActor, services: ServicesDep) -> Response:
    await services.auth.logout(actor)
    return Response(status_code=204)
