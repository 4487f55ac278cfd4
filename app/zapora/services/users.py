"""User administration: roles and activation, audited."""

from __future__ import annotations

from uuid import UUID

from zapora.infra.db import Row
from zapora.repositories import users as users_repo
from zapora.services.audit import AuditService
from zapora.services.common import Actor, Forbidden, NotFound, Origin, Page, Role
from zapora.services.context import Infra


class UserService:
    def __init__(self, infra: Infra, audit: AuditService) -> None:
        self.infra = infra
        self.audit = audit

    async def get(self, user_id: UUID) -> Row:
        user = await self.infra.db.read(lambda conn: users_repo.by_id(conn, user_id), fresh=True)
        if user is None:
            raise NotFound("User not found.")
        return user

    async def list(self, page: Page) -> tuple[list[Row], int]:
        return await self.infra.db.read(
            lambda conn: users_repo.page(conn, page.limit, page.offset), fresh=True
        )

    async def update(
        self,
        actor: Actor,
        origin: Origin,
        user_id: UUID,
        role: Role | None,
        is_active: bool | None,
    ) -> Row:
        # Nobody changes their own role or deactivates themselves: the last admin could lock
        # everyone out.
        if user_id == actor.id and (role is not None or is_active is False):
            await self.audit.record(
                "permission.denied",
                actor_id=actor.id,
                origin=origin,
                target_type="user",
                target_id=user_id,
                details={"reason": "own role change" if role is not None else "own deactivation"},
            )
            raise Forbidden("You cannot change your own role or deactivate yourself.")
        changes: dict[str, object] = {}
        if role is not None:
            changes["role"] = str(role)
        if is_active is not None:
            changes["is_active"] = is_active
        async with self.infra.db.transaction() as conn:
            before = await users_repo.by_id(conn, user_id)
            if before is None:
                raise NotFound("User not found.")
            if not changes:
                return before
            after = await users_repo.update(conn, user_id, changes)
            assert after is not None
            if role is not None and before["role"] != after["role"]:
                await self.audit.record(
                    "user.role_changed",
                    actor_id=actor.id,
                    origin=origin,
                    target_type="user",
                    target_id=user_id,
                    details={"from": before["role"], "to": after["role"]},
                    conn=conn,
                )
            await self.audit.record(
                "user.updated",
                actor_id=actor.id,
                origin=origin,
                target_type="user",
                target_id=user_id,
                details={k: str(v) for k, v in changes.items()},
                conn=conn,
            )
        return after
