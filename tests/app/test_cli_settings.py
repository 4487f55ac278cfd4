from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from zapora import cli
from zapora.migrate import head_revision
from zapora.settings import Settings, WeakSecretError, check_secret, get_settings

from . import servers as srv
from .conftest import PASSWORD, login


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, servers: srv.Servers, secret_file: Path) -> None:
    monkeypatch.setenv("ZAPORA_ENVIRONMENT", "test")
    monkeypatch.setenv("ZAPORA_DATABASE_URL", servers.primary.dsn())
    monkeypatch.setenv("ZAPORA_REDIS_URL", servers.redis_url)
    monkeypatch.setenv("ZAPORA_JWT_SECRET_FILE", str(secret_file))
    monkeypatch.setenv("ZAPORA_BCRYPT_ROUNDS", "4")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_openapi_command(cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["openapi"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out[out.index("{\n") :])
    assert "/orders" in doc["paths"]


def test_migrate_is_idempotent(cli_env: None, db: psycopg.Connection[dict[str, Any]]) -> None:
    assert cli.main(["migrate"]) == 0
    assert db.execute("SELECT version_num FROM alembic_version").fetchone() == {
        "version_num": head_revision()
    }


def test_create_admin(
    cli_env: None, tmp_path: Path, client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text(PASSWORD + "\n")
    args = ["create-admin", "--email", "root@example.com", "--password-file", str(password_file)]
    assert cli.main(args) == 0
    assert cli.main(args) == 1  # already exists
    tokens = login(client, "root@example.com")
    me = client.get("/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.json()["role"] == "admin"
    short = tmp_path / "short"
    short.write_text("short")
    assert (
        cli.main(["create-admin", "--email", "x@example.com", "--password-file", str(short)]) == 2
    )


def test_create_admin_password_from_env(
    cli_env: None, monkeypatch: pytest.MonkeyPatch, client: TestClient
) -> None:
    monkeypatch.setenv("ZAPORA_ADMIN_PASSWORD", PASSWORD)
    assert cli.main(["create-admin", "--email", "env@example.com"]) == 0
    login(client, "env@example.com")


@pytest.mark.parametrize(
    "secret",
    [
        b"short",
        b"a" * 64,
        b"changeme-changeme-changeme-changeme!",
        b"0123456789" * 4,
        b"my-super-secret-value-for-production-use-1",
    ],
)
def test_weak_secrets_refused(secret: bytes) -> None:
    with pytest.raises(WeakSecretError):
        check_secret(secret)


def test_settings_secret_rules(tmp_path: Path) -> None:
    weak = tmp_path / "weak"
    weak.write_text("changeme")
    with pytest.raises(ValueError, match=r"placeholder|at least"):
        Settings(environment="production", jwt_secret_file=weak)
    with pytest.raises(ValueError, match="must name a file"):
        Settings(environment="production")
    # Development tolerates a weak secret and can generate one.
    assert Settings(environment="development", jwt_secret_file=weak).jwt_secret.get_secret_value()
    assert len(Settings(environment="development").jwt_secret.get_secret_value()) >= 32
    good = tmp_path / "good"
    good.write_text(secrets.token_hex(32))
    redis_pw = tmp_path / "redis"
    redis_pw.write_text("s3cret\n")
    settings = Settings(
        environment="production", jwt_secret_file=good, redis_password_file=redis_pw
    )
    assert settings.redis_password is not None
    assert settings.redis_password.get_secret_value() == "s3cret"
    assert "jwt_secret" not in settings.model_dump()


def test_healthcheck_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZAPORA_BIND", f"0.0.0.0:{srv.free_port()}")
    assert cli.main(["healthcheck"]) == 1


def test_configuration_errors_are_one_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weak = tmp_path / "weak"
    weak.write_text("changeme")
    monkeypatch.setenv("ZAPORA_ENVIRONMENT", "production")
    monkeypatch.setenv("ZAPORA_JWT_SECRET_FILE", str(weak))
    get_settings.cache_clear()
    try:
        assert cli.main(["migrate"]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert "configuration error" in err
    assert "Traceback" not in err
    # Printing the OpenAPI document needs no secret.
    assert cli.main(["openapi"]) == 0
