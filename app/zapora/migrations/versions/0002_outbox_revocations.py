"""Outbox for events and cache invalidations; durable token revocations.

Expand only: the previous release neither reads nor writes these tables, so it keeps working
on this schema during a blue/green switch.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- Written in the transaction of the change it announces; the worker relays it to
        -- Redis (order events to the stream, menu changes to the cache epoch and pub/sub) in
        -- id order and deletes what it relayed.
        CREATE TABLE outbox (
            id bigserial PRIMARY KEY,
            topic text NOT NULL,
            aggregate_id text NOT NULL,
            payload jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );

        -- Revocations are durable here; Redis holds a cache of them.
        CREATE TABLE revoked_tokens (
            jti text PRIMARY KEY,
            expires_at timestamptz NOT NULL
        );
        CREATE INDEX revoked_tokens_expires_idx ON revoked_tokens (expires_at);

        CREATE TABLE revoked_token_families (
            family text PRIMARY KEY,
            expires_at timestamptz NOT NULL
        );
        CREATE INDEX revoked_token_families_expires_idx ON revoked_token_families (expires_at);

        -- A refresh token's jti once used: the row makes a second use detectable even after
        -- Redis lost its data.
        CREATE TABLE used_refresh_tokens (
            jti text PRIMARY KEY,
            family text NOT NULL,
            expires_at timestamptz NOT NULL
        );
        CREATE INDEX used_refresh_tokens_expires_idx ON used_refresh_tokens (expires_at);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE used_refresh_tokens, revoked_token_families, revoked_tokens, outbox;")
