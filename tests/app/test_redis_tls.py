"""The API's Redis client over TLS (ZAPORA_REDIS_TLS_CA_FILE) against a real redis-server
that listens with TLS only (`--port 0 --tls-port`, TLS 1.3), as the redis role runs it:
the client verifies the server's certificate against the given CA and the address it
connects to; a certificate from another CA, or one that names another address, is refused,
and so is a plaintext client."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import RedisError

from zapora.infra.redis import redis_from_settings
from zapora.settings import Settings

from . import servers as srv


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> Path:
    key, crt = directory / f"{name}.key", directory / f"{name}.crt"
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
    openssl(
        "req", "-x509", "-new", "-key", str(key), "-subj", f"/CN={name}", "-days", "2",
        "-addext", "basicConstraints=critical,CA:TRUE", "-out", str(crt),
    )  # fmt: skip
    return crt


def make_leaf(directory: Path, ca: str, name: str, san: str) -> tuple[Path, Path]:
    key, csr, crt = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
    openssl("req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-out", str(csr))
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n")
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(directory / f"{ca}.crt"),
        "-CAkey", str(directory / f"{ca}.key"), "-set_serial", "1", "-days", "2",
        "-extfile", str(ext), "-out", str(crt),
    )  # fmt: skip
    return crt, key


def start_tls_redis(
    directory: Path, crt: Path, key: Path, ca: Path
) -> tuple[int, subprocess.Popen[bytes]]:
    port = srv.free_port()
    proc = subprocess.Popen(
        ["/usr/bin/redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(crt), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no", "--tls-protocols", "TLSv1.3", "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    srv.wait_until(lambda: listening(port) or proc.poll() is not None, timeout=10)
    assert proc.poll() is None, "redis-server with TLS did not start"
    return port, proc


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, Path]]:
    d = tmp_path_factory.mktemp("redis-tls")
    ca = make_ca(d, "internal-ca")
    other_ca = make_ca(d, "other-ca")
    crt, key = make_leaf(d, "internal-ca", "server", "IP:127.0.0.1")
    port, proc = start_tls_redis(d, crt, key, ca)
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
    ca = make_ca(tmp_path, "internal-ca")
    crt, key = make_leaf(tmp_path, "internal-ca", "elsewhere", "IP:10.9.9.9")
    port, proc = start_tls_redis(tmp_path, crt, key, ca)
    try:
        with pytest.raises((RedisError, OSError)):
            api_ping(port, ca)
    finally:
        proc.kill()
        proc.wait()
