"""Order events remember the outbox row they came from, and record each row once.

A relay that dies after XADD but before deleting its outbox rows (or whose XADD did not
reach enough replicas in time) sends those rows again under new stream ids: the stream id
alone lets the consumer record the same change twice. The outbox id each event carries is
unique per change, so a unique index on it makes the consumer's INSERT ... ON CONFLICT DO
NOTHING skip the repeat. Expand-safe: the column is nullable (the previous release's worker
inserts without it, and NULLs never conflict); built CONCURRENTLY, writes go on.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE order_events ADD COLUMN IF NOT EXISTS outbox_id bigint")
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS order_events_outbox_id_key"
            " ON order_events (outbox_id)"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS order_events_outbox_id_key")
    op.execute("ALTER TABLE order_events DROP COLUMN IF EXISTS outbox_id")
