"""Registration, login with lockout, refresh-token rotation with reuse detection, logout."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
from uuid import UUID

import psycopg
from anyio import to_thread
from loguru import logger

from zapora.infra.db import Row
from zapora.infra.errors import UNAVAILABLE
from zapora.infra.metrics import DEGRADED, USERS_REGISTERED
from zapora.infra.security import InvalidToken, TokenClaims, hash_password, verify_password
from zapora.repositories import tokens as tokens_repo
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


class LocalCounters:
    """Failed-login counters kept in this process while Redis is unavailable, so throttling
    still holds (per process: at most `workers` times the limit) instead of failing open."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._counts: dict[str, tuple[float, int]] = {}

    def get(self, key: str) -> tuple[int, int]:
        """(count, seconds left in its window)."""
        expires, count = self._counts.get(key, (0.0, 0))
        left = int(expires - time.monotonic())
        return (count, left) if left > 0 else (0, 0)

    def incr(self, key: str, window: int) -> int:
        count, left = self.get(key)
        if len(self._counts) >= self.max_keys:
            now = time.monotonic()
            self._counts = {k: v for k, v in self._counts.items() if v[0] > now}
            if len(self._counts) >= self.max_keys:
                # Still full of live keys: an attack; drop the oldest half, keep counting.
                for k in sorted(self._counts, key=lambda k: self._counts[k][0])[
                    : self.max_keys // 2
                ]:
                    del self._counts[k]
        expires = time.monotonic() + (left if count else window)
        self._counts[key] = (expires, count + 1)
        return count + 1

    def delete(self, key: str) -> None:
        self._counts.pop(key, None)


class AuthService:
    def __init__(self, infra: Infra, audit: AuditService) -> None:
        self.infra = infra
        self.audit = audit
        self.local_failures = LocalCounters()
        # Failed logins are audited with a keyed hash of what was typed (often a password).
        self._email_key = hmac.new(
            infra.settings.jwt_secret.get_secret_value().encode(), b"audit-email", hashlib.sha256
        ).digest()
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

    def email_hash(self, email: str) -> str:
        return hmac.new(self._email_key, email.lower().encode(), hashlib.sha256).hexdigest()[:32]

    async def login(self, email: str, password: str, origin: Origin) -> TokenPair:
        settings = self.infra.settings
        account_key = f"auth:fail:acct:{email.lower()}"
        client_key = f"auth:fail:ip:{origin.client_ip}"
        await self._refuse_if_locked(account_key, client_key)

        user = await self.infra.db.read(lambda conn: users_repo.by_email(conn, email), fresh=True)
        candidate = user["password_hash"] if user else self._dummy_hash
        ok = await to_thread.run_sync(verify_password, password, candidate)
        if user is None or not ok:
            acct_count, client_count = await self._count_failure(account_key, client_key)
            actor_id = user["id"] if user else None
            email_hash = self.email_hash(email)
            await self.audit.record(
                "auth.login_failed",
                actor_id=actor_id,
                origin=origin,
                details={"email_hash": email_hash},
            )
            if acct_count == settings.login_max_failures_per_account or (
                client_count == settings.login_max_failures_per_client
            ):
                await self.audit.record(
                    "auth.lockout",
                    actor_id=actor_id,
                    origin=origin,
                    details={
                        "email_hash": email_hash,
                        "scope": "account"
                        if acct_count >= settings.login_max_failures_per_account
                        else "client",
                    },
                )
            raise Unauthorized(BAD_CREDENTIALS)
        if not user["is_active"]:
            raise Forbidden("This account is deactivated.")
        self.local_failures.delete(account_key)
        try:
            await self.infra.redis.delete(account_key)
        except UNAVAILABLE:
            DEGRADED.labels("redis", "login_reset").inc()
        return self._issue_pair(user["id"], str(uuid.uuid4()))

    async def _count_failure(self, account_key: str, client_key: str) -> tuple[int, int]:
        window = self.infra.settings.login_failure_window_seconds
        try:
            async with self.infra.redis.pipeline(transaction=False) as pipe:
                for key in (account_key, client_key):
                    pipe.incr(key)
                    pipe.expire(key, window, nx=True)
                acct_count, _, client_count, _ = await pipe.execute()
            return int(acct_count), int(client_count)
        except UNAVAILABLE as exc:
            DEGRADED.labels("redis", "login_throttle").inc()
            logger.warning("login failures counted in this process; Redis: {}", exc)
            return (
                self.local_failures.incr(account_key, window),
                self.local_failures.incr(client_key, window),
            )

    async def _refuse_if_locked(self, account_key: str, client_key: str) -> None:
        settings = self.infra.settings
        limits = (
            (account_key, settings.login_max_failures_per_account),
            (client_key, settings.login_max_failures_per_client),
        )
        # The stricter of Redis and this process's own counts (kept while Redis was away).
        for key, limit in limits:
            count, left = self.local_failures.get(key)
            if count >= limit:
                raise RateLimited("Too many failed sign-in attempts; try again later.", left)
        try:
            values = await self.infra.redis.mget(account_key, client_key)
        except UNAVAILABLE:
            DEGRADED.labels("redis", "login_throttle").inc()
            return
        for (key, limit), value in zip(limits, values, strict=True):
            if value is not None and int(value) >= limit:
                try:
                    ttl = int(await self.infra.redis.ttl(key))
                except UNAVAILABLE:
                    ttl = settings.login_failure_window_seconds
                raise RateLimited("Too many failed sign-in attempts; try again later.", max(ttl, 1))

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
        # Durable in PostgreSQL: the insert makes rotation atomic (of two concurrent uses
        # exactly one wins), and a reuse is caught even after Redis lost its data.
        async with self.infra.db.transaction() as conn:
            if await tokens_repo.family_revoked(conn, family):
                raise Unauthorized(BAD_TOKEN)
            first_use = await tokens_repo.use_refresh_token(conn, claims.jti, family, claims.exp)
        if not first_use:
            await self._revoke_family(family)
            await self.audit.record(
                "auth.refresh_reuse",
                actor_id=_uuid_or_none(claims.sub),
                origin=origin,
                details={"family": family},
            )
            raise Unauthorized(BAD_TOKEN)
        user = await self.infra.db.read(lambda conn: users_repo.by_id(conn, claims.sub), fresh=True)
        if user is None or not user["is_active"]:
            raise Unauthorized(BAD_TOKEN)
        return self._issue_pair(user["id"], family)

    async def _revoke_family(self, family: str) -> None:
        # Every token of the family expires by then (refresh tokens live longest).
        until = int(time.time()) + self.infra.settings.refresh_token_ttl_seconds
        async with self.infra.db.transaction() as conn:
            await tokens_repo.revoke_family(conn, family, until)

    async def logout(self, actor: Actor) -> None:
        until = int(time.time()) + self.infra.settings.refresh_token_ttl_seconds
        async with self.infra.db.transaction() as conn:
            await tokens_repo.revoke_token(conn, actor.token_jti, actor.token_exp)
            if actor.token_family:
                await tokens_repo.revoke_family(conn, actor.token_family, until)

    async def authenticate(self, token: str) -> tuple[Actor, Row]:
        claims = self.access_claims(token)
        # Read on the primary on purpose: a deactivation, role change or revocation applies at
        # once. Revocations live in PostgreSQL, checked in this same query: no Redis needed.
        user = await self.infra.db.read(
            lambda conn: tokens_repo.user_unless_revoked(conn, claims.sub, claims.jti, claims.fam),
            fresh=True,
        )
        actor = self.actor_for(claims, user)
        assert user is not None  # actor_for refused a missing row
        return actor, user

    def access_claims(self, token: str) -> TokenClaims:
        try:
            return self.infra.tokens.decode(token, "access")
        except InvalidToken as exc:
            raise Unauthorized(BAD_TOKEN) from exc

    @staticmethod
    def actor_for(claims: TokenClaims, user: Row | None) -> Actor:
        """The caller, from the row of tokens_repo.user_unless_revoked (read on the primary in
        the request): refused when the user is gone or inactive or the token revoked."""
        if user is None or user["revoked"] or not user["is_active"]:
            raise Unauthorized(BAD_TOKEN)
        return Actor(
            id=user["id"],
            role=Role(user["role"]),
            token_jti=claims.jti,
            token_exp=claims.exp,
            token_family=claims.fam,
        )


def _uuid_or_none(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None
