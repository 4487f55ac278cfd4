"""SQL for durable token state: revoked access tokens, revoked families, used refresh tokens."""

from __future__ import annotations

from uuid import UUID

from zapora.infra.db import Conn, Row, execute, fetch_one

_USER_COLUMNS = "id, email, password_hash, full_name, role, is_active, created_at, updated_at"


def user_unless_revoked_sql(join: str = "", columns: str = "") -> str:
    """The user row with `revoked` telling whether this token (%(jti)s) or its family
    (%(family)s) was revoked, for user %(id)s; `join` and `columns` add what a caller reads
    in the same statement."""
    return (
        f"SELECT {_USER_COLUMNS},"
        " (EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = %(jti)s)"
        "  OR EXISTS (SELECT 1 FROM revoked_token_families WHERE family = %(family)s))"
        f" AS revoked{columns} FROM users{join} WHERE users.id = %(id)s"
    )


_USER_UNLESS_REVOKED = user_unless_revoked_sql()


async def user_unless_revoked(
    conn: Conn, user_id: UUID | str, jti: str, family: str | None
) -> Row | None:
    """The user, with `revoked` telling whether this token or its family was revoked.

    One round trip: the per-request user reload also checks revocation, so revocation holds
    without Redis and after Redis lost its data."""
    return await fetch_one(
        conn, _USER_UNLESS_REVOKED, {"id": user_id, "jti": jti, "family": family or ""}
    )


async def revoke_token(conn: Conn, jti: str, expires_at: int) -> None:
    await execute(
        conn,
        "INSERT INTO revoked_tokens (jti, expires_at) VALUES (%s, to_timestamp(%s))"
        " ON CONFLICT (jti) DO NOTHING",
        (jti, expires_at),
    )


async def revoke_family(conn: Conn, family: str, expires_at: int) -> None:
    await execute(
        conn,
        "INSERT INTO revoked_token_families (family, expires_at) VALUES (%s, to_timestamp(%s))"
        " ON CONFLICT (family) DO UPDATE SET expires_at ="
        " greatest(revoked_token_families.expires_at, excluded.expires_at)",
        (family, expires_at),
    )


async def family_revoked(conn: Conn, family: str) -> bool:
    row = await fetch_one(
        conn, "SELECT 1 AS one FROM revoked_token_families WHERE family = %s", (family,)
    )
    return row is not None


async def use_refresh_token(conn: Conn, jti: str, family: str, expires_at: int) -> bool:
    """True for the first use of this refresh token; of two concurrent uses exactly one wins."""
    row = await fetch_one(
        conn,
        "INSERT INTO used_refresh_tokens (jti, family, expires_at)"
        " VALUES (%s, %s, to_timestamp(%s)) ON CONFLICT (jti) DO NOTHING RETURNING jti",
        (jti, family, expires_at),
    )
    return row is not None


async def purge_expired(conn: Conn) -> int:
    purged = 0
    for table in ("revoked_tokens", "revoked_token_families", "used_refresh_tokens"):
        purged += await execute(conn, f"DELETE FROM {table} WHERE expires_at < now()")
    return purged
