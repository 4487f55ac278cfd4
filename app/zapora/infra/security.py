"""Password hashing (bcrypt) and JWTs (python-jose, HS256 pinned). python-jose verifies a
token the first time a process sees it; the verified claims are remembered by the token's
text, and the clock-dependent and identity claims are checked again on every use.

Keys rotate as a key set: the first key signs, every key verifies, and a token names its
key in the header's `kid` (derived from the key, so nothing but the key set is configured).
A token with a `kid` outside the set is refused; a token without one (issued before key ids
existed) is verified against each key of the set."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import bcrypt
from jose import JWTError, jwt

ALGORITHM = "HS256"
# bcrypt reads at most 72 bytes. A longer password (72 characters can be up to 288 bytes in
# UTF-8) is reduced to its SHA-256 digest (base64, 44 bytes) first, so every byte counts.
MAX_PASSWORD_BYTES = 72
# Verified tokens remembered per process (TokenCodec.decode); about 1 kB each.
VERIFIED_TOKENS_KEPT = 1024


def _bcrypt_input(password: str) -> bytes:
    raw = password.encode()
    if len(raw) > MAX_PASSWORD_BYTES:
        return base64.b64encode(hashlib.sha256(raw).digest())
    return raw


def hash_password(password: str, rounds: int) -> str:
    return bcrypt.hashpw(_bcrypt_input(password), bcrypt.gensalt(rounds)).decode()


def verify_password(password: str, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(_bcrypt_input(password), hashed.encode())
    except ValueError:
        return False


class InvalidToken(Exception):
    pass


def key_id(key: str) -> str:
    """The public name of a signing key: a truncated SHA-256 of a label and the key, which
    tells nothing about the key (it is 32+ random bytes) and stays the same on every host."""
    return hashlib.sha256(b"zapora-jwt-kid\x00" + key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TokenClaims:
    sub: str
    jti: str
    typ: str
    exp: int
    fam: str | None
    raw: dict[str, Any]


class TokenCodec:
    def __init__(
        self, keys: str | Sequence[str], issuer: str, audience: str, leeway: int = 0
    ) -> None:
        key_list = [keys] if isinstance(keys, str) else list(keys)
        if not key_list:
            raise ValueError("a JWT key set needs at least one key")
        # The first key signs; every key verifies the tokens it signed.
        self._secret = key_list[0]
        self._kid = key_id(key_list[0])
        self._keys = {key_id(k): k for k in key_list}
        self._issuer = issuer
        self._audience = audience
        # Tolerated clock skew between hosts, on `nbf`, `iat` and `exp`.
        self._leeway = leeway
        # Tokens whose signature and form were verified, by their exact text (a client sends
        # the same access token on every request): a hit skips the HMAC and the parsing, never
        # the claim checks, which depend on the clock. Oldest first out when full.
        self._verified: dict[str, dict[str, Any]] = {}

    def issue(
        self, sub: str, typ: str, ttl: int, fam: str | None = None, now: int | None = None
    ) -> tuple[str, TokenClaims]:
        issued = int(time.time()) if now is None else now
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": sub,
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl,
            "jti": uuid.uuid4().hex,
            "typ": typ,
        }
        if fam is not None:
            claims["fam"] = fam
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM, headers={"kid": self._kid})
        return token, _to_claims(claims)

    def decode(self, token: str, typ: str) -> TokenClaims:
        """The claims of a valid token of type `typ`, else InvalidToken.

        The first time this process sees the token, python-jose checks it (HS256 only, the
        signature, every claim required, exp/nbf with the leeway, iss, aud). The verified
        claims are then remembered by the token's text (bounded, oldest out first); every use,
        the first included, checks again what depends on the clock or identity: exp, nbf,
        iss, aud, sub, jti; then `typ`."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify(token)
            if len(self._verified) >= VERIFIED_TOKENS_KEPT:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = claims
        self._check_claims(claims)
        if claims.get("typ") != typ:
            raise InvalidToken("wrong token type")
        return _to_claims(claims)

    def _verify(self, token: str) -> dict[str, Any]:
        """The claims of a token python-jose verifies (HS256 only, every claim required) with
        the key its `kid` names, or, without a `kid`, with the first key of the set that
        verifies it."""
        try:
            header = jwt.get_unverified_header(token)
        except JWTError as exc:
            raise InvalidToken(str(exc)) from exc
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("unexpected algorithm")
        kid = header.get("kid")
        if kid is None:
            candidates = list(self._keys.values())
        elif isinstance(kid, str) and kid in self._keys:
            candidates = [self._keys[kid]]
        else:
            raise InvalidToken("unknown key id")
        error = InvalidToken("no key verifies the token")
        for key in candidates:
            try:
                return self._verify_with(token, key)
            except InvalidToken as exc:
                error = exc
        raise error

    def _verify_with(self, token: str, key: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={
                    "require_exp": True,
                    "require_iat": True,
                    "require_nbf": True,
                    "require_iss": True,
                    "require_aud": True,
                    "require_sub": True,
                    "require_jti": True,
                    "leeway": self._leeway,
                },
            )
        except JWTError as exc:
            raise InvalidToken(str(exc)) from exc
        return claims

    def _check_claims(self, claims: dict[str, Any]) -> None:
        times = {name: claims.get(name) for name in ("exp", "iat", "nbf")}
        for name, value in times.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidToken(f"missing or non-numeric {name}")
        now = time.time()
        if times["exp"] < now - self._leeway:  # type: ignore[operator]
            raise InvalidToken("expired")
        if times["nbf"] > now + self._leeway:  # type: ignore[operator]
            raise InvalidToken("not yet valid")
        if claims.get("iss") != self._issuer:
            raise InvalidToken("wrong issuer")
        audience = claims.get("aud")
        if isinstance(audience, str):
            audience = [audience]
        if (
            not isinstance(audience, list)
            or not all(isinstance(a, str) for a in audience)
            or self._audience not in audience
        ):
            raise InvalidToken("wrong audience")
        for name in ("sub", "jti"):
            if not isinstance(claims.get(name), str):
                raise InvalidToken(f"missing or non-string {name}")


def _to_claims(claims: dict[str, Any]) -> TokenClaims:
    return TokenClaims(
        sub=str(claims["sub"]),
        jti=str(claims["jti"]),
        typ=str(claims.get("typ")),
        exp=int(claims["exp"]),
        fam=claims.get("fam"),
        raw=claims,
    )
