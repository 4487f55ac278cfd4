"""Types shared by the domain services: who acts, from where, and the domain's errors."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID


class Role(StrEnum):
    customer = "customer"
    staff = "staff"
    admin = "admin"


STAFF_ROLES = frozenset({Role.staff, Role.admin})


@dataclass(frozen=True)
class Actor:
    id: UUID
    role: Role
    token_jti: str = ""
    token_exp: int = 0
    token_family: str | None = None

    @property
    def is_staff(self) -> bool:
        return self.role in STAFF_ROLES


@dataclass(frozen=True)
class Origin:
    client_ip: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class Page:
    limit: int = 20
    offset: int = 0


class DomainError(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError):
    pass


class Conflict(DomainError):
    pass


class Forbidden(DomainError):
    pass


class Unauthorized(DomainError):
    pass


class Invalid(DomainError):
    pass


class BadRequest(DomainError):
    """A request the schema allows but the server cannot use (e.g. a tampered cursor)."""


class RateLimited(DomainError):
    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
