"""Indexes in the keyset order of the big lists: (filter, timestamp DESC, id DESC).

Orders and audit events are listed newest first with the id as tie-breaker, a page starting
strictly after the previous page's last (timestamp, id). These indexes hold exactly that
order, so a page reads its own rows and no more, at any depth. They replace the 0001 indexes
on (filter, timestamp DESC), which they cover. Built CONCURRENTLY (outside a transaction):
writes go on while they build. Expand-safe: the previous release's queries (ORDER BY
timestamp DESC, id with OFFSET) use them as well.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_NEW = (
    ("orders_keyset_idx", "orders (created_at DESC, id DESC)"),
    ("orders_user_keyset_idx", "orders (user_id, created_at DESC, id DESC)"),
    ("orders_status_keyset_idx", "orders (status, created_at DESC, id DESC)"),
    ("audit_events_keyset_idx", "audit_events (occurred_at DESC, id DESC)"),
    ("audit_events_actor_keyset_idx", "audit_events (actor_id, occurred_at DESC, id DESC)"),
    ("audit_events_action_keyset_idx", "audit_events (action, occurred_at DESC, id DESC)"),
)
_OLD = (
    ("orders_user_created_idx", "orders (user_id, created_at DESC)"),
    ("orders_status_created_idx", "orders (status, created_at DESC)"),
    ("audit_events_actor_idx", "audit_events (actor_id, occurred_at DESC)"),
    ("audit_events_action_idx", "audit_events (action, occurred_at DESC)"),
)


def _create(indexes: tuple[tuple[str, str], ...]) -> None:
    with op.get_context().autocommit_block():
        for name, target in indexes:
            # A build that was interrupted leaves an INVALID index under this name: drop it.
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            op.execute(f"CREATE INDEX CONCURRENTLY {name} ON {target}")


def _drop(indexes: tuple[tuple[str, str], ...]) -> None:
    with op.get_context().autocommit_block():
        for name, _ in indexes:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


def upgrade() -> None:
    _create(_NEW)
    _drop(_OLD)


def downgrade() -> None:
    _create(_OLD)
    _drop(_NEW)
