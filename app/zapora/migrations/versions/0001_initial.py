"""Initial schema: users, menus, orders, idempotency keys, audit events, order event log.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE users (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            email text NOT NULL,
            password_hash text NOT NULL,
            full_name text NOT NULL,
            role text NOT NULL DEFAULT 'customer'
                CHECK (role IN ('customer', 'staff', 'admin')),
            is_active boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE UNIQUE INDEX users_email_key ON users (lower(email));

        CREATE TABLE menus (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            name text NOT NULL,
            description text NOT NULL DEFAULT '',
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );

        CREATE TABLE menu_items (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            menu_id uuid NOT NULL REFERENCES menus (id) ON DELETE CASCADE,
            name text NOT NULL,
            description text NOT NULL DEFAULT '',
            price_minor bigint NOT NULL CHECK (price_minor >= 0),
            currency char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
            available boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX menu_items_menu_id_idx ON menu_items (menu_id, name);

        CREATE TABLE orders (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            user_id uuid NOT NULL REFERENCES users (id),
            status text NOT NULL DEFAULT 'pending' CHECK (status IN
                ('pending', 'confirmed', 'preparing', 'ready', 'delivered', 'cancelled')),
            total_minor bigint NOT NULL CHECK (total_minor >= 0),
            currency char(3) NOT NULL,
            notes text,
            version integer NOT NULL DEFAULT 1,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX orders_user_created_idx ON orders (user_id, created_at DESC);
        CREATE INDEX orders_status_created_idx ON orders (status, created_at DESC);

        -- Lines copy name and price: an order keeps what was sold even after the menu changes.
        CREATE TABLE order_items (
            order_id uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
            line_no integer NOT NULL,
            menu_item_id uuid NOT NULL,
            name text NOT NULL,
            quantity integer NOT NULL CHECK (quantity BETWEEN 1 AND 50),
            unit_price_minor bigint NOT NULL CHECK (unit_price_minor >= 0),
            PRIMARY KEY (order_id, line_no)
        );

        CREATE TABLE idempotency_keys (
            user_id uuid NOT NULL REFERENCES users (id),
            key text NOT NULL,
            request_hash text NOT NULL,
            response_status integer,
            response_body jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (user_id, key)
        );

        CREATE TABLE audit_events (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            occurred_at timestamptz NOT NULL DEFAULT now(),
            actor_id uuid,
            action text NOT NULL,
            target_type text,
            target_id text,
            client_ip text,
            request_id text,
            details jsonb NOT NULL DEFAULT '{}'::jsonb
        );
        CREATE INDEX audit_events_actor_idx ON audit_events (actor_id, occurred_at DESC);
        CREATE INDEX audit_events_action_idx ON audit_events (action, occurred_at DESC);

        -- Written by the worker; the stream entry id makes redelivery after a crash harmless.
        CREATE TABLE order_events (
            stream_id text PRIMARY KEY,
            order_id uuid NOT NULL,
            status text NOT NULL,
            occurred_at timestamptz NOT NULL,
            processed_at timestamptz NOT NULL DEFAULT now()
        );
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE order_events, audit_events, idempotency_keys, order_items, orders,
            menu_items, menus, users;
        """
    )
