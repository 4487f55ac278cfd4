"""Password hashing (bcrypt) and JWTs (python-jose, HS256 pinned)."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

import bcrypt
from jose import JWTError, jwt

ALGORITHM = "HS256"
# bcrypt reads at most 72 bytes. A longer password (72 characters can be up to 288 bytes in
# UTF-8) is reduced to its SHA-256 digest (base64, 44 bytes) first, so every byte counts.
MAX_PASSWORD_BYTES = 72


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


@dataclass(frozen=True)
class TokenClaims:
    sub: str
    jti: str
    typ: str
    exp: int
    fam: str | None
    raw: dict[str, Any]


class TokenCodec:
    def __init__(self, secret: str, issuer: str, audience: str, leeway: int = 0) -> None:
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        # Tolerated clock skew between hosts, on `nbf`, `iat` and `exp`.
        self._leeway = leeway

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
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        return token, _to_claims(claims)

    def decode(self, token: str, typ: str) -> TokenClaims:
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != ALGORITHM:
                raise InvalidToken("unexpected algorithm")
            claims = jwt.decode(
                token,
                self._secret,
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
        if claims.get("typ") != typ:
            raise InvalidToken("wrong token type")
        return _to_claims(claims)


def _to_claims(claims: dict[str, Any]) -> TokenClaims:
    return TokenClaims(
        sub=str(claims["sub"]),
        jti=str(claims["jti"]),
        typ=str(claims.get("typ")),
        exp=int(claims["exp"]),
        fam=claims.get("fam"),
        raw=claims,
    )
