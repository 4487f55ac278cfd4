"""JWT attacks: every forged, stale or revoked token is a 401."""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jose import jwt

from zapora.infra import security
from zapora.infra.security import InvalidToken, TokenCodec

from .conftest import People


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(person_id: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "zapora",
        "aud": "zapora-api",
        "sub": person_id,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": secrets.token_hex(8),
        "typ": "access",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _call(client: TestClient, token: str) -> int:
    return client.get("/users/me", headers={"Authorization": f"Bearer {token}"}).status_code


def test_valid_forged_token_with_real_key_works(
    client: TestClient, people: People, secret_file: Path
) -> None:
    # Sanity check of the helpers: the same claims signed with the real key are accepted.
    token = jwt.encode(_claims(people.customer.id), secret_file.read_text(), algorithm="HS256")
    assert _call(client, token) == 200


def test_alg_none(client: TestClient, people: People) -> None:
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(people.admin.id))}."
    assert _call(client, token) == 401


def test_other_algorithm(client: TestClient, people: People, secret_file: Path) -> None:
    token = jwt.encode(_claims(people.admin.id), secret_file.read_text(), algorithm="HS512")
    assert _call(client, token) == 401


def test_wrong_key(client: TestClient, people: People) -> None:
    token = jwt.encode(_claims(people.admin.id), secrets.token_hex(32), algorithm="HS256")
    assert _call(client, token) == 401


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": int(time.time()) - 60},  # beyond the 30 s leeway
        {"nbf": int(time.time()) + 600},
        {"aud": "someone-else"},
        {"iss": "evil"},
        {"exp": None},
        {"jti": None},
        {"nbf": None},
        {"iat": None},
        {"typ": "refresh"},
        {"sub": "00000000-0000-0000-0000-000000000000"},
    ],
    ids=[
        "expired",
        "not-yet-valid",
        "wrong-aud",
        "wrong-iss",
        "no-exp",
        "no-jti",
        "no-nbf",
        "no-iat",
        "refresh-as-access",
        "unknown-sub",
    ],
)
def test_bad_claims(
    client: TestClient, people: People, secret_file: Path, overrides: dict[str, Any]
) -> None:
    token = jwt.encode(
        _claims(people.customer.id, **overrides), secret_file.read_text(), algorithm="HS256"
    )
    assert _call(client, token) == 401


def test_garbage_and_missing(client: TestClient) -> None:
    assert _call(client, "not.a.token") == 401
    assert client.get("/users/me").status_code == 401
    assert client.get("/users/me", headers={"Authorization": "Basic abc"}).status_code == 401


def test_revoked_jti(client: TestClient, people: People) -> None:
    assert client.post("/auth/logout", headers=people.customer.headers).status_code == 204
    assert _call(client, people.customer.tokens["access_token"]) == 401


def test_reused_refresh_token(client: TestClient, people: People) -> None:
    refresh = people.customer.tokens["refresh_token"]
    assert client.post("/auth/refresh", json={"refresh_token": refresh}).status_code == 200
    assert client.post("/auth/refresh", json={"refresh_token": refresh}).status_code == 401


def test_clock_skew_within_leeway_is_tolerated(
    client: TestClient, people: People, secret_file: Path
) -> None:
    # The issuing host's clock runs 10 s ahead of ours: nbf/iat are in our future.
    now = int(time.time())
    token = jwt.encode(
        {**_claims(people.admin.id), "iat": now + 10, "nbf": now + 10},
        secret_file.read_text(),
        algorithm="HS256",
    )
    assert _call(client, token) == 200


def test_verified_token_memory_keeps_every_claim_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token verified once is remembered by its text, but its times, audience, issuer and
    type are checked on every use; the memory is bounded."""
    codec = TokenCodec(secrets.token_hex(32), "zapora", "zapora-api", leeway=30)
    token, _ = codec.issue("someone", "access", ttl=60)
    assert codec.decode(token, "access").sub == "someone"
    assert codec.decode(token, "access").sub == "someone"  # from the memory
    with pytest.raises(InvalidToken):
        codec.decode(token, "refresh")
    # An altered signature is a different text: verified afresh, refused.
    head, body, signature = token.split(".")
    with pytest.raises(InvalidToken):
        codec.decode(f"{head}.{body}.{signature[::-1]}", "access")
    with pytest.raises(InvalidToken):
        codec.decode(f"{head}.{body}.{signature}x", "access")
    # The clock moves past exp + leeway: the remembered token is refused.
    later = time.time() + 120
    monkeypatch.setattr(security.time, "time", lambda: later)
    with pytest.raises(InvalidToken):
        codec.decode(token, "access")
    monkeypatch.undo()
    # Bounded: the oldest entries leave first.
    monkeypatch.setattr(security, "VERIFIED_TOKENS_KEPT", 3)
    tokens = [codec.issue(f"user-{n}", "access", ttl=60)[0] for n in range(5)]
    for each in tokens:
        codec.decode(each, "access")
    assert list(codec._verified) == tokens[2:]


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": ["other", "zapora-api"]},
        {"aud": ["other"]},
        {"aud": 7},
        {"exp": "soon"},
        {"exp": True},
        {"sub": 12},
        {"iss": None},
    ],
    ids=[
        "aud-list-with-ours",
        "aud-list-without",
        "aud-number",
        "exp-text",
        "exp-bool",
        "sub-number",
        "no-iss",
    ],
)
def test_claim_forms(claims: dict[str, Any]) -> None:
    secret = secrets.token_hex(32)
    codec = TokenCodec(secret, "zapora", "zapora-api")
    token = jwt.encode(_claims("someone", **claims), secret, algorithm="HS256")
    if claims == {"aud": ["other", "zapora-api"]}:
        assert codec.decode(token, "access").sub == "someone"
    else:
        with pytest.raises(InvalidToken):
            codec.decode(token, "access")
