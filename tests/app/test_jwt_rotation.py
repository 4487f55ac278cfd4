"""JWT key rotation: the key set in the secret file (first key signs, the others verify), the
`kid` each token carries, and what a token with an unknown or no `kid` gets."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from jose import jwt

from zapora.infra.security import InvalidToken, TokenCodec, key_id
from zapora.services.common import BadRequest
from zapora.services.pagination import CursorCodec

from . import servers as srv
from .conftest import app_for, login, make_settings, register
from .test_jwt import _claims


@pytest.fixture
def rotated(
    servers: srv.Servers, secret_file: Path, tmp_path: Path
) -> tuple[TestClient, TestClient, str, str]:
    """Two apps on the same database and Redis: `before` has one key, `after` the rotated
    set (a new signing key, the old one second), as rotate-secrets.yml writes it."""
    old = secret_file.read_text().strip()
    new = secrets.token_hex(32)
    rotated_file = tmp_path / "jwt_secret"
    rotated_file.write_text(f"{new}\n{old}\n")
    before = TestClient(app_for(make_settings(servers, secret_file)))
    after = TestClient(app_for(make_settings(servers, rotated_file)))
    return before, after, old, new


def _kid(token: str) -> Any:
    return jwt.get_unverified_header(token).get("kid")


def test_tokens_carry_the_signing_keys_kid(
    rotated: tuple[TestClient, TestClient, str, str],
) -> None:
    before, after, old, new = rotated
    with before, after:
        register(before, "kid@example.com")
        assert _kid(login(before, "kid@example.com")["access_token"]) == key_id(old)
        tokens = login(after, "kid@example.com")
        assert _kid(tokens["access_token"]) == key_id(new)
        assert _kid(tokens["refresh_token"]) == key_id(new)
        assert key_id(old) != key_id(new)
        # The kid names the key without revealing it.
        assert old not in tokens["access_token"] and new not in tokens["access_token"]


def test_old_kid_token_and_refresh_survive_rotation(
    rotated: tuple[TestClient, TestClient, str, str],
) -> None:
    before, after, _, new = rotated
    with before, after:
        register(before, "old@example.com")
        tokens = login(before, "old@example.com")
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        # Signed with the previous key: still accepted by the rotated set.
        assert after.get("/users/me", headers=headers).status_code == 200
        # The refresh token from before the rotation refreshes; the new pair is signed
        # with the new key.
        r = after.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert r.status_code == 200, r.text
        assert _kid(r.json()["access_token"]) == key_id(new)
        # Rotation with refresh: the old refresh token is spent either way.
        again = after.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert again.status_code == 401


def test_new_kid_token_refused_by_a_host_without_the_key(
    rotated: tuple[TestClient, TestClient, str, str],
) -> None:
    """Why a rotation starts the new key set on every host before any of them signs with it:
    a host that lacks the key refuses its tokens."""
    before, after, _, _ = rotated
    with before, after:
        register(after, "new@example.com")
        tokens = login(after, "new@example.com")
        r = before.get("/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
        assert r.status_code == 401


def test_unknown_kid_is_401_problem(
    client: TestClient, db: psycopg.Connection[dict[str, Any]], secret_file: Path
) -> None:
    register(client, "unknown@example.com")
    row = db.execute("SELECT id FROM users WHERE email = 'unknown@example.com'").fetchone()
    assert row is not None
    # Signed with the right key, but naming a key id the set does not hold.
    token = jwt.encode(
        _claims(str(row["id"])),
        secret_file.read_text().strip(),
        algorithm="HS256",
        headers={"kid": "0123456789abcdef"},
    )
    r = client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["status"] == 401
    for kid in (7, ["x"], ""):
        bad = jwt.encode(
            _claims(str(row["id"])),
            secret_file.read_text().strip(),
            algorithm="HS256",
            headers={"kid": kid},
        )
        r = client.get("/users/me", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401


def test_token_without_kid_is_checked_against_every_key(
    rotated: tuple[TestClient, TestClient, str, str],
    db: psycopg.Connection[dict[str, Any]],
) -> None:
    """Tokens from releases before key ids carry none: any key of the set may verify them
    (docs/api.md); a key outside the set may not."""
    _, after, old, new = rotated
    with after:
        register(after, "nokid@example.com")
        row = db.execute("SELECT id FROM users WHERE email = 'nokid@example.com'").fetchone()
        assert row is not None
        for key, expected in ((old, 200), (new, 200), (secrets.token_hex(32), 401)):
            token = jwt.encode(_claims(str(row["id"])), key, algorithm="HS256")
            assert "kid" not in jwt.get_unverified_header(token)
            r = after.get("/users/me", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == expected, (expected, r.text)


def test_codec_key_set() -> None:
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    token, _ = TokenCodec(old, "zapora", "zapora-api").issue("someone", "access", ttl=60)
    assert TokenCodec([new, old], "zapora", "zapora-api").decode(token, "access").sub == "someone"
    with pytest.raises(InvalidToken, match="unknown key id"):
        TokenCodec([new], "zapora", "zapora-api").decode(token, "access")
    with pytest.raises(ValueError):
        TokenCodec([], "zapora", "zapora-api")


def test_cursor_from_before_a_rotation_still_pages() -> None:
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    at = datetime.now(UTC)
    row_id = uuid.uuid4()
    cursor = CursorCodec(old).encode("orders", at, row_id)
    assert CursorCodec([new, old]).decode("orders", cursor).id == row_id
    with pytest.raises(BadRequest):
        CursorCodec([new]).decode("orders", cursor)
