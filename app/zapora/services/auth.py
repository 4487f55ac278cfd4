"""Registration, login with lockout, refresh-token rotation with reuse detection, logout."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from uuid import UUID

import psycopg
from anyio import to_thread

from zapora.infra.db import Row
from zapora.infra.metrics import USERS_REGISTERED
from zapora.infra.security import InvalidToken, hash_password, verify_password
from zapora.repositories import users as users_repo
from zapora.services.audit import AuditService
from zapora.services.common import (
    Actor,
    Conflict,
    Forbidden,
    Origin,
    RateLimited,
    Role,
    Unauthorized,
)
from zapora.services.context import Infra

BAD_CREDENTIALS = "Incorrect e-mail or password."
BAD_TOKEN = "Invalid or expired token."  # noqa: S105 - a message, not a secret


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"  # noqa: S105 - the OAuth token type, not a secret


class AuthService:
    def __init__(self, infra: Infra, audit: AuditService) -> None:
        self.infra = infra
        self.audit = audit
        # Compared against when the e-mail is unknown so both failures cost the same time.
        self._dummy_hash = hash_password(uuid.uuid4().hex, infra.settings.bcrypt_rounds)

    async def _hash(self, password: str) -> str:
        return await to_thread.run_sync(hash_password, password, self.infra.settings.bcrypt_rounds)

    async def register(self, email: str, password: str, full_name: str, role: Role) -> Row:
        password_hash = await self._hash(password)
        try:
            async with self.infra.db.transaction() as conn:
                user = await users_repo.insert(conn, email, password_hash, full_name, role)
        except psycopg.errors.UniqueViolation as exc:
            raise Conflict("This e-mail address is already registered.") from exc
        USERS_REGISTERED.inc()
        return user

    async def login(self, email: str, password: str, origin: Origin) -> TokenPair:
        settings = self.infra.settings
        account_key = f"auth:fail:acct:{email.lower()}"
        client_key = f"auth:fail:ip:{origin.client_ip}"
        await self._refuse_if_locked(account_key, client_key)

        async with self.infra.db.reader(fresh=True) as conn:
            user = await users_repo.by_email(conn, email)
        candidate = user["password_hash"] if user else self._dummy_hash
        ok = await to_thread.run_sync(verify_password, password, candidate)
        if user is None or not ok:
            async with self.infra.redis.pipeline(transaction=False) as pipe:
                for key in (account_key, client_key):
                    pipe.incr(key)
                    pipe.expire(key, settings.login_failure_window_seconds, nx=True)
                acct_count, _, client_count, _ = await pipe.execute()
            actor_id = user["id"] if user else None
            await self.audit.record(
                "auth.login_failed", actor_id=actor_id, origin=origin, details={"email": email}
            )
            if acct_count == settings.login_max_failures_per_account or (
                client_count == settings.login_max_failures_per_client
            ):
                await self.audit.record(
                    "auth.lockout",
                    actor_id=actor_id,
                    origin=origin,
                    details={
                        "email": email,
                        "scope": "account"
                        if acct_count >= settings.login_max_failures_per_account
                        else "client",
                    },
                )
            raise Unauthorized(BAD_CREDENTIALS)
        if not user["is_active"]:
            raise Forbidden("This account is deactivated.")
        await self.infra.redis.delete(account_key)
        return self._issue_pair(user["id"], str(uuid.uuid4()))

    async def _refuse_if_locked(self, account_key: str, client_key: str) -> None:
        settings = self.infra.settings
        acct, client = await self.infra.redis.mget(account_key, client_key)
        for key, value, limit in (
            (account_key, acct, settings.login_max_failures_per_account),
            (client_key, client, settings.login_max_failures_per_client),
        ):
            if value is not None and int(value) >= limit:
                ttl = await self.infra.redis.ttl(key)
                raise RateLimited(
                    "Too many failed sign-in attempts; try again later.", max(int(ttl), 1)
                )

    def _issue_pair(self, user_id: UUID, family: str) -> TokenPair:
        settings = self.infra.settings
        access, _ = self.infra.tokens.issue(
            str(user_id), "access", settings.access_token_ttl_seconds, fam=family
        )
        refresh, _ = self.infra.tokens.issue(
            str(user_id), "refresh", settings.refresh_token_ttl_seconds, fam=family
        )
        return TokenPair(access, refresh, settings.access_token_ttl_seconds)

    async def refresh(self, token: str, origin: Origin) -> TokenPair:
        try:
            claims = self.infra.tokens.decode(token, "refresh")
        except InvalidToken as exc:
            raise Unauthorized(BAD_TOKEN) from exc
        family = claims.fam or ""
        redis = self.infra.redis
        ttl = max(claims.exp - int(time.time()), 1)
        if await redis.exists(f"auth:fam:revoked:{family}"):
            raise Unauthorized(BAD_TOKEN)
        # SET NX makes rotation atomic: of two concurrent uses exactly one wins.
        first_use = await redis.set(f"auth:rt:used:{claims.jti}", b"1", nx=True, ex=ttl)
        if not first_use:
            await self._revoke_family(family)
            await self.audit.record(
                "auth.refresh_reuse",
                actor_id=_uuid_or_none(claims.sub),
                origin=origin,
                details={"family": family},
            )
            raise Unauthorized(BAD_TOKEN)
        async with self.infra.db.reader(fresh=True) as conn:
            user = await users_repo.by_id(conn, claims.sub)
        if user is None or not user["is_active"]:
            raise Unauthorized(BAD_TOKEN)
        return self._issue_pair(user["id"], family)

    async def _revoke_family(self, family: str) -> None:
        await self.infra.redis.set(
            f"auth:fam:revoked:{family}", b"1", ex=self.infra.settings.refresh_token_ttl_seconds
        )

    async def logout(self, actor: Actor) -> None:
        ttl = max(actor.token_exp - int(time.time()), 1)
        await self.infra.redis.set(f"auth:revoked:{actor.token_jti}", b"1", ex=ttl)
        if actor.token_family:
            await self._revoke_family(actor.token_family)

    async def authenticate(self, token: str) -> tuple[Actor, Row]:
        try:
            claims = self.infra.tokens.decode(token, "access")
        except InvalidToken as exc:
            raise Unauthorized(BAD_TOKEN) from exc
        keys = [f"auth:revoked:{claims.jti}"]
        if claims.fam:
            keys.append(f"auth:fam:revoked:{claims.fam}")
        if await self.infra.redis.exists(*keys):
            raise Unauthorized(BAD_TOKEN)
        # Read on the primary on purpose: a deactivation or role change applies at once.
        async with self.infra.db.reader(fresh=True) as conn:
            user = await users_repo.by_id(conn, claims.sub)
        if user is None or not user["is_active"]:
            raise Unauthorized(BAD_TOKEN)
        actor = Actor(
            id=user["id"],
            role=Role(user["role"]),
            token_jti=claims.jti,
            token_exp=claims.exp,
            token_family=claims.fam,
        )
        return actor, user


def _uuid_or_none(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None
