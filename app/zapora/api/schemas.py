"""Request and response bodies. Requests forbid unknown fields (no mass assignment)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar
from uuid import UUID

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict

from zapora.services.common import Role

# The order's one shape is the service's model, re-exported (explicitly, for mypy) here.
from zapora.services.orders import OrderLineOut as OrderLineOut
from zapora.services.orders import OrderOut as OrderOut
from zapora.services.orders import OrderStatus as OrderStatus

MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 72
# Every rule is in the schema, so a request the OpenAPI document allows is one the API accepts.
NO_NUL = r"^[^\x00]*$"


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; refuse it here instead of failing in the database.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _email(value: str) -> str:
    # Syntax only: no DNS, and names reserved for tests or local use are accepted too, so that
    # every address of the schema's `format: email` is one the API takes.
    try:
        return validate_email(
            value, check_deliverability=False, globally_deliverable=False, test_environment=True
        ).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid e-mail address: {exc}") from exc


def _whole_number(value: Any) -> Any:
    # JSON Schema counts 3.0 as an integer; strict validation still refuses "3", 3.5 and true.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def Text(max_length: int, min_length: int = 0) -> Any:
    return Annotated[
        str,
        Field(min_length=min_length, max_length=max_length, pattern=NO_NUL),
        AfterValidator(_no_nul),
    ]


Name = Text(200, 1)
Description = Text(2000)
Password = Annotated[str, Field(max_length=1024, pattern=NO_NUL), AfterValidator(_no_nul)]
NewPassword = Annotated[
    str,
    Field(min_length=MIN_PASSWORD_CHARS, max_length=MAX_PASSWORD_CHARS, pattern=NO_NUL),
    AfterValidator(_no_nul),
]
Email = Annotated[
    str,
    Field(max_length=254, json_schema_extra={"format": "email"}),
    AfterValidator(_no_nul),
    AfterValidator(_email),
]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
PriceMinor = Annotated[int, Strict(), Field(ge=0, le=100_000_000), BeforeValidator(_whole_number)]
Quantity = Annotated[int, Strict(), Field(ge=1, le=50), BeforeValidator(_whole_number)]
Flag = Annotated[bool, Field(strict=True)]


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterIn(RequestBody):
    email: Email
    password: NewPassword
    full_name: Name  # type: ignore[valid-type]


class LoginIn(RequestBody):
    email: Text(254, 1)  # type: ignore[valid-type]
    password: Password


class RefreshIn(RequestBody):
    refresh_token: Annotated[str, Field(min_length=1, max_length=4096)]


class TokenOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int


class UserOut(BaseModel):
    id: UUID
    email: str
    full_name: str
    role: Role
    is_active: bool
    created_at: datetime


class UserPatch(RequestBody):
    role: Role | None = None
    is_active: Flag | None = None


class MenuIn(RequestBody):
    name: Name  # type: ignore[valid-type]
    description: Description = ""  # type: ignore[valid-type]


class MenuPatch(RequestBody):
    name: Name | None = None  # type: ignore[valid-type]
    description: Description | None = None  # type: ignore[valid-type]


class MenuOut(BaseModel):
    id: UUID
    name: str
    description: str
    created_at: datetime
    updated_at: datetime


class MenuItemIn(RequestBody):
    menu_id: UUID
    name: Name  # type: ignore[valid-type]
    description: Description = ""  # type: ignore[valid-type]
    price_minor: PriceMinor
    currency: Currency
    available: Flag = True


class MenuItemPatch(RequestBody):
    menu_id: UUID | None = None
    name: Name | None = None  # type: ignore[valid-type]
    description: Description | None = None  # type: ignore[valid-type]
    price_minor: PriceMinor | None = None
    currency: Currency | None = None
    available: Flag | None = None


class MenuItemOut(BaseModel):
    id: UUID
    menu_id: UUID
    name: str
    description: str
    price_minor: int
    currency: str
    available: bool


class OrderLineIn(RequestBody):
    menu_item_id: UUID
    quantity: Quantity


class OrderIn(RequestBody):
    items: Annotated[list[OrderLineIn], Field(min_length=1, max_length=50)]
    notes: Text(500) | None = None  # type: ignore[valid-type]


class StatusIn(RequestBody):
    status: OrderStatus


class AuditEventOut(BaseModel):
    id: UUID
    occurred_at: datetime
    actor_id: UUID | None
    action: str
    target_type: str | None
    target_id: str | None
    client_ip: str | None
    request_id: str | None
    details: dict[str, Any]


T = TypeVar("T")


class PageOut(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class CursorPageOut(BaseModel, Generic[T]):
    """A page of a keyset list, newest first. `next_cursor` is null on the last page."""

    items: list[T]
    limit: int
    next_cursor: str | None
