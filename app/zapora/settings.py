"""The one configuration object: environment variables prefixed ZAPORA_, secrets from files."""

from __future__ import annotations

import secrets
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values people paste from examples; refusing them outside development keeps a demo secret
# from ever signing production tokens.
_PLACEHOLDERS = ("change", "placeholder", "example", "secret", "password", "default", "xxxx")
_MIN_SECRET_BYTES = 32
_MIN_DISTINCT_BYTES = 12


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class WeakSecretError(ValueError):
    pass


def check_secret(value: bytes) -> None:
    """Refuse secrets that are short, low in variety or look like a placeholder."""
    if len(value) < _MIN_SECRET_BYTES:
        raise WeakSecretError(f"the JWT secret must be at least {_MIN_SECRET_BYTES} bytes")
    if len(set(value)) < _MIN_DISTINCT_BYTES:
        raise WeakSecretError("the JWT secret does not look random (too few distinct bytes)")
    lowered = value.lower()
    if any(word.encode() in lowered for word in _PLACEHOLDERS):
        raise WeakSecretError("the JWT secret looks like a placeholder")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZAPORA_", extra="ignore")

    environment: Environment = Environment.production
    # libpq connection strings; a password belongs in a passfile (`?passfile=/run/secrets/..`)
    # so it never sits in the environment.
    database_url: str = "postgresql:///zapora"
    replica_database_url: str | None = None
    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(default=10, ge=1)
    # A request waits this long for a database connection, then gets 503 + Retry-After.
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    # A connection the pool failed to open is retried with a doubling delay (1, 2, 4 s...)
    # for at most this long, then given up; the next request that finds the pool empty
    # starts a fresh attempt at once. Short, so that after a failover's 10-20 s without a
    # primary the first connect is not 8-16 s away (psycopg_pool's default: 300 s).
    db_reconnect_timeout_seconds: float = Field(default=2.0, gt=0)
    # A peer that vanished or froze: TCP keepalives probe an idle connection after
    # keepalives_idle s, every keepalives_interval s, keepalives_count times; data unacknowledged
    # for db_tcp_user_timeout_ms ends the connection. Added to both URLs unless they set them.
    db_keepalives_idle_seconds: int = Field(default=5, ge=1)
    db_keepalives_interval_seconds: int = Field(default=2, ge=1)
    db_keepalives_count: int = Field(default=3, ge=1)
    db_tcp_user_timeout_ms: int = Field(default=9000, ge=0)
    # The server cancels a statement after this long (0: no limit). A request that holds a
    # connection longer than db_request_deadline_seconds (the server could not act: frozen,
    # cut off) has the connection closed under it and is answered 503.
    db_statement_timeout_ms: int = Field(default=5000, ge=0)
    db_request_deadline_seconds: float = Field(default=8.0, ge=0)
    # A lag-tolerant read waits this long for a replica connection before using the primary;
    # after a replica failure reads stay on the primary this long.
    replica_wait_seconds: float = Field(default=0.5, gt=0)
    replica_retry_seconds: float = Field(default=5.0, gt=0)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password_file: Path | None = None
    # Redis through Sentinel: "host:port,host:port" of the Sentinels; when set, the client
    # follows the primary of redis_sentinel_master and redis_url gives only the database
    # number. redis_username and the password file log in to Redis and to the Sentinels.
    redis_sentinels: str = ""
    redis_sentinel_master: str = "zapora"
    redis_username: str | None = None
    # TLS to Redis and the Sentinels: when set, this CA file verifies every server's
    # certificate (its address must be in the certificate), TLS 1.3 only. Unset: plain TCP.
    redis_tls_ca_file: Path | None = None
    # After each stream entry (XADD) wait until this many replicas have it (WAIT), at most
    # redis_wait_timeout_ms; an entry that misses the deadline is reported as not published.
    redis_wait_replicas: int = Field(default=0, ge=0)
    redis_wait_timeout_ms: int = Field(default=500, ge=1)
    redis_socket_timeout_seconds: float = Field(default=10.0, gt=0)
    redis_connect_timeout_seconds: float = Field(default=2.0, gt=0)
    # Attempts after a dropped connection (a fresh connection, asking Sentinel afresh); a
    # second failed attempt opens the circuit breaker and ends the command, so a value above
    # 1 acts as 1 (accepted: releases before the breaker documented 10).
    redis_retries: int = Field(default=1, ge=0)
    # While the breaker is open, requests skip Redis and one probe PINGs it this often; the
    # first answer closes the breaker.
    redis_breaker_cooldown_seconds: float = Field(default=1.0, gt=0)

    # The JWT key set: one key per line, the first signs, the others (previous keys kept by a
    # rotation) only verify. A token names its key by `kid`, derived from the key itself.
    jwt_secret_file: Path | None = None
    jwt_issuer: str = "zapora"
    jwt_audience: str = "zapora-api"
    # Clock skew tolerated between the host that issued a token and the one checking it.
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)
    access_token_ttl_seconds: int = Field(default=900, ge=30)
    refresh_token_ttl_seconds: int = Field(default=14 * 24 * 3600, ge=60)
    bcrypt_rounds: int = Field(default=12, ge=4, le=16)

    login_max_failures_per_account: int = 5
    login_max_failures_per_client: int = 20
    login_failure_window_seconds: int = 900

    # After a write a client reads from the primary for this long (read-your-writes).
    read_your_writes_seconds: int = 5
    # Writes (POST/PATCH/DELETE) per signed-in user per minute; 0 turns the limit off.
    user_write_limit_per_minute: int = Field(default=120, ge=0)
    menu_cache_ttl_seconds: int = 300
    # While Redis is away each process keeps the menu-item lists it read this long (0: not
    # at all): another process's menu change shows within it.
    menu_outage_cache_seconds: float = Field(default=1.0, ge=0)
    max_body_bytes: int = 64 * 1024
    trusted_proxy_hops: int = 0

    # `/docs` and `/openapi.json` on the public port: on in development and test, off in
    # production unless set (`zapora openapi` prints the document either way).
    docs_enabled: bool | None = None
    # The worker's Prometheus listener (`zapora worker`); 0 turns it off. The API's listener
    # is ZAPORA_METRICS_PORT (default 9110), read by gunicorn_conf.
    worker_metrics_port: int = Field(default=9111, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"  # noqa: S104 - inside the container; the host maps the port

    otlp_endpoint: str | None = None
    service_name: str = "zapora-api"
    log_level: str = "INFO"

    order_stream: str = "zapora:order-events"
    worker_group: str = "zapora-workers"
    worker_reclaim_idle_ms: int = 60_000
    worker_block_ms: int = 5_000
    # An order event that failed this many deliveries moves to "<stream>:dead".
    worker_max_deliveries: int = Field(default=5, ge=1)
    outbox_poll_ms: int = Field(default=200, ge=10)
    # Idempotency keys older than this are purged by the worker; retries come within minutes.
    idempotency_key_ttl_hours: int = Field(default=24, ge=1)
    purge_interval_seconds: int = Field(default=600, ge=1)

    # Loaded from jwt_secret_file by the validator below; never read from the environment.
    # jwt_secret signs; jwt_previous_secrets still verify tokens they signed.
    jwt_secret: SecretStr = Field(default=SecretStr(""), exclude=True)
    jwt_previous_secrets: tuple[SecretStr, ...] = Field(default=(), exclude=True)
    redis_password: SecretStr | None = Field(default=None, exclude=True)

    @property
    def jwt_keys(self) -> list[str]:
        """The JWT key set, the signing key first."""
        return [k.get_secret_value() for k in (self.jwt_secret, *self.jwt_previous_secrets)]

    @property
    def docs_on(self) -> bool:
        if self.docs_enabled is not None:
            return self.docs_enabled
        return self.environment is not Environment.production

    @field_validator("redis_tls_ca_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Compose passes an unset variable as "": plain TCP, not the current directory.
        return None if value == "" else value

    @model_validator(mode="after")
    def _load_secrets(self) -> Settings:
        if self.jwt_secret_file is not None:
            raw = self.jwt_secret_file.read_bytes()
        elif self.environment is Environment.development:
            raw = secrets.token_urlsafe(48).encode()
        else:
            raise WeakSecretError("ZAPORA_JWT_SECRET_FILE must name a file holding the secret")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WeakSecretError(
                "the JWT secret file must hold text, e.g. the output of `openssl rand -hex 32`"
            ) from exc
        texts = [line.strip() for line in text.splitlines() if line.strip()] or [""]
        for key in texts:
            try:
                check_secret(key.encode())
            except WeakSecretError:
                if self.environment is not Environment.development:
                    raise
        self.jwt_secret = SecretStr(texts[0])
        self.jwt_previous_secrets = tuple(SecretStr(t) for t in texts[1:] if t != texts[0])
        if self.redis_password_file is not None:
            self.redis_password = SecretStr(self.redis_password_file.read_text().strip())
        if self.db_request_deadline_seconds and (
            self.db_request_deadline_seconds * 1000 <= self.db_statement_timeout_ms
        ):
            raise ValueError(
                "ZAPORA_DB_REQUEST_DEADLINE_SECONDS must exceed ZAPORA_DB_STATEMENT_TIMEOUT_MS"
            )
        if self.redis_socket_timeout_seconds * 1000 <= self.worker_block_ms:
            raise ValueError(
                "ZAPORA_REDIS_SOCKET_TIMEOUT_SECONDS must exceed ZAPORA_WORKER_BLOCK_MS"
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
