"""The API's Redis client over TLS (ZAPORA_REDIS_TLS_CA_FILE) against a real redis-server
that listens with TLS only (`--port 0 --tls-port`, TLS 1.3), as the redis role runs it:
the client verifies the server's certificate against the given CA and the address it
connects to; a certificate from another CA, or one that names another address, is refused,
and so is a plaintext client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import RedisError

from zapora.infra.redis import redis_from_settings
from zapora.settings import Settings

from . import servers as srv


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, Path]]:
    d = tmp_path_factory.mktemp("redis-tls")
    ca = srv.make_ca(d, "internal-ca")
    other_ca = srv.make_ca(d, "other-ca")
    crt, key = srv.make_leaf(d, "internal-ca", "server", "IP:127.0.0.1")
    port = srv.free_port()
    proc = srv.start_redis(port, d, (crt, key, ca))
    yield port, ca, other_ca
    proc.kill()
    proc.wait()


def api_ping(port: int, ca: Path | None) -> bool:
    settings = Settings(
        environment="development",
        redis_url=f"redis://127.0.0.1:{port}/0",
        redis_tls_ca_file=ca,
        redis_retries=0,
    )
    return ping_with(settings)


def ping_with(settings: Settings) -> bool:
    """One PING through the API's own client (redis_from_settings) built from `settings`."""

    async def go() -> bool:
        client = redis_from_settings(settings)
        try:
            return bool(await client.ping())
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_the_api_client_verifies_the_server_against_the_internal_ca(
    tls_redis: tuple[int, Path, Path],
) -> None:
    port, ca, _ = tls_redis
    assert api_ping(port, ca)


def test_a_server_certificate_from_another_ca_is_refused(tls_redis: tuple[int, Path, Path]) -> None:
    port, _, other_ca = tls_redis
    with pytest.raises((RedisError, OSError)):
        api_ping(port, other_ca)


def test_a_plaintext_client_gets_no_answer(tls_redis: tuple[int, Path, Path]) -> None:
    port, _, _ = tls_redis
    with pytest.raises((RedisError, OSError)):
        api_ping(port, None)


def test_a_certificate_naming_another_address_is_refused(tmp_path: Path) -> None:
    ca = srv.make_ca(tmp_path, "internal-ca")
    crt, key = srv.make_leaf(tmp_path, "internal-ca", "elsewhere", "IP:10.9.9.9")
    port = srv.free_port()
    proc = srv.start_redis(port, tmp_path, (crt, key, ca))
    try:
        with pytest.raises((RedisError, OSError)):
            api_ping(port, ca)
    finally:
        proc.kill()
        proc.wait()
