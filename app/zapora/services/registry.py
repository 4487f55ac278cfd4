"""All domain services wired to one Infra; the HTTP app, the worker and the CLI share it."""

from __future__ import annotations

from dataclasses import dataclass

from zapora.services.audit import AuditService
from zapora.services.auth import AuthService
from zapora.services.context import Infra
from zapora.services.menus import MenuService
from zapora.services.orders import OrderService
from zapora.services.users import UserService


@dataclass
class Services:
    infra: Infra
    audit: AuditService
    auth: AuthService
    users: UserService
    menus: MenuService
    orders: OrderService

    @classmethod
    def build(cls, infra: Infra) -> Services:
        audit = AuditService(infra)
        return cls(
            infra=infra,
            audit=audit,
            auth=AuthService(infra, audit),
            users=UserService(infra, audit),
            menus=MenuService(infra, audit),
            orders=OrderService(infra, audit),
        )
