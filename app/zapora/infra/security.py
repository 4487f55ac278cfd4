"""Password hashing (bcrypt) and JWTs (HS256 pinned): python-jose issues them; the check on
every request is done here with the standard library (one HMAC, no key object per call)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import bcrypt
from jose import jwt

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
        self._key = secret.encode()
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
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        return token, _to_claims(claims)

    def decode(self, token: str, typ: str) -> TokenClaims:
        """The claims of a valid token of type `typ`, else InvalidToken.

        Checks, as python-jose's decode with every `require_*` option did: three base64url
        parts; header `alg` exactly HS256; the HMAC-SHA256 signature (constant-time compare);
        `exp`, `iat`, `nbf` present and numeric, `exp` not past and `nbf` not future (beyond
        the leeway); `iss` equal to ours; `aud` ours (a string, or a list holding it);
        `sub` and `jti` present strings; then `typ`."""
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
        """The signed claims of a well-formed HS256 token, else InvalidToken."""
        try:
            header_part, payload_part, signature_part = token.split(".")
            header = json.loads(_b64decode(header_part))
            if not isinstance(header, dict) or header.get("alg") != ALGORITHM:
                raise InvalidToken("unexpected algorithm")
            expected = hmac.new(
                self._key, f"{header_part}.{payload_part}".encode("ascii"), hashlib.sha256
            ).digest()
            if not hmac.compare_digest(expected, _b64decode(signature_part)):
                raise InvalidToken("signature verification failed")
            claims = json.loads(_b64decode(payload_part))
        except (ValueError, TypeError, binascii.Error) as exc:  # JSONDecodeError, bad base64
            raise InvalidToken("malformed token") from exc
        if not isinstance(claims, dict):
            raise InvalidToken("malformed claims")
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


def _b64decode(part: str) -> bytes:
    """base64url without padding, strictly (a stray character is an error, not skipped)."""
    return base64.b64decode(part + "=" * (-len(part) % 4), altchars=b"-_", validate=True)


def _to_claims(claims: dict[str, Any]) -> TokenClaims:
    return TokenClaims(
        sub=str(claims["sub"]),
        jti=str(claims["jti"]),
        typ=str(claims.get("typ")),
        exp=int(claims["exp"]),
        fam=claims.get("fam"),
        raw=claims,
    )
