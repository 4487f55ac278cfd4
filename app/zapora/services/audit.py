"""Audit events: one table row and one JSON log line per security-relevant action."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from loguru import logger

from zapora.infra.db import Conn, Row
from zapora.infra.metrics import AUDIT_EVENTS
from zapora.repositories import audit as audit_repo
from zapora.services import pagination
from zapora.services.common import Origin
from zapora.services.context import Infra
from zapora.services.pagination import Window


class AuditService:
    def __init__(self, infra: Infra) -> None:
        self.infra = infra

    async def record(
        self,
        action: str,
        *,
        actor_id: UUID | None,
        origin: Origin,
        target_type: str | None = None,
        target_id: object | None = None,
        details: dict[str, Any] | None = None,
        conn: Conn | None = None,
    ) -> None:
        """Write the event inside `conn`'s transaction when given, else in its own."""
        params = (
            actor_id,
            action,
            target_type,
            None if target_id is None else str(target_id),
            origin.client_ip,
            origin.request_id,
            json.dumps(details or {}),
        )
        if conn is not None:
            await audit_repo.insert(conn, params)
        else:
            async with self.infra.db.transaction() as own:
                await audit_repo.insert(own, params)
        self.announce(action, actor_id, origin, (target_type, target_id), details or {})

    @staticmethod
    def announce(
        action: str,
        actor_id: UUID | None,
        origin: Origin,
        target: tuple[str | None, object | None],
        details: dict[str, Any],
    ) -> None:
        """The metric and the log line of an audit event (written by record, or by the
        caller's own SQL); `target` is (type, id)."""
        target_type, target_id = target
        AUDIT_EVENTS.labels(action).inc()
        logger.bind(
            kind="audit",
            action=action,
            actor_id=str(actor_id) if actor_id else None,
            user_id=str(actor_id) if actor_id else None,
            target_type=target_type,
            target_id=None if target_id is None else str(target_id),
            client_ip=origin.client_ip,
            details=details,
        ).info("audit {}", action)

    async def list(
        self, window: Window, actor_id: UUID | None, action: str | None
    ) -> tuple[list[Row], str | None]:
        scope = f"audit:{actor_id or ''}:{action or ''}"
        start = pagination.after(self.infra.cursors, scope, window)
        found = await self.infra.db.read(
            lambda conn: audit_repo.page(
                conn, window.limit + 1, window.offset, start, actor_id, action
            ),
            fresh=True,
        )
        return pagination.finish(self.infra.cursors, scope, window, found, "occurred_at")
