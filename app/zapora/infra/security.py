"""Password hashing (bcrypt) and JWTs (python-jose, HS256 pinned)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import bcrypt
from jose import JWTError, jwt

ALGORITHM = "HS256"
# bcrypt looks only at the first 72 bytes; longer passwords are refused at the API.
MAX_PASSWORD_BYTES = 72


def hash_password(password: str, rounds: int) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def verify_password(password: str, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode()[:MAX_PASSWORD_BYTES], hashed.encode())
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
    def __init__(self, secret: str, issuer: str, audience: str) -> None:
        self._secret = secret
        self._issuer = issuer
        self._audience = audience

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
                    "leeway": 0,
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
