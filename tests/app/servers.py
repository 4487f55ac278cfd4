"""The one place that starts real servers for the API tests: PostgreSQL (a primary and a
streaming standby made with pg_basebackup -R) and Redis, from Debian's packages, on loopback
ports in temporary directories. Nothing here is a mock."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> Path:
    """A throwaway CA (EC P-256, two days): NAME.key and NAME.crt in directory."""
    key, crt = directory / f"{name}.key", directory / f"{name}.crt"
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
    openssl(
        "req", "-x509", "-new", "-key", str(key), "-subj", f"/CN={name}", "-days", "2",
        "-addext", "basicConstraints=critical,CA:TRUE", "-out", str(crt),
    )  # fmt: skip
    return crt


def make_leaf(directory: Path, ca: str, name: str, san: str) -> tuple[Path, Path]:
    """A server certificate for subjectAltName san, signed by make_ca's CA named ca."""
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"{name} not found: install Debian's postgresql package (make setup)")
    return found[-1]


def _as_postgres() -> dict[str, Any]:
    # initdb and postgres refuse to run as root; run them as Debian's postgres user then.
    # Popen switches user itself, so signals reach postgres and not a wrapper.
    if os.geteuid() == 0:
        return {"user": "postgres", "group": "postgres", "extra_groups": []}
    return {}


def _run(cmd: list[str], log: Path) -> None:
    with log.open("ab") as out:
        subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT, **_as_postgres())


@dataclass
class Postgres:
    data: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    # With TLS (started(tls=True)): the CA clients verify the server with.
    ca: Path | None = None

    def dsn(self, db: str = "zapora") -> str:
        tls = f"?sslmode=verify-full&sslrootcert={self.ca}" if self.ca else ""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}{tls}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    _pg_bin("postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.data),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                **_as_postgres(),
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL on port {self.port} did not start; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for every client.
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class Servers:
    root: Path
    primary: Postgres
    standby: Postgres
    redis_port: int
    redis_proc: subprocess.Popen[bytes]
    # With TLS: the CA file that verifies both servers (ZAPORA_REDIS_TLS_CA_FILE).
    ca: Path | None = None

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"


_CONF = """
listen_addresses = '127.0.0.1'
unix_socket_directories = '{sock}'
wal_level = replica
max_wal_senders = 5
hot_standby = on
max_connections = 200
shared_buffers = 128MB
log_min_messages = warning
"""
# Test data is disposable: trade durability for speed. Benchmarks keep the defaults.
_FAST_CONF = """
fsync = off
synchronous_commit = off
full_page_writes = off
"""
_HBA = """
local all all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
"""


def wait_until(predicate: Any, timeout: float = 20) -> None:
    """Poll ``predicate`` every 0.1 s until it is true; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def wait_for_standby(primary: Postgres, standby: Postgres, timeout: float = 15) -> None:
    with psycopg.connect(primary.dsn("postgres"), autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        lsn = row[0]
    deadline = time.monotonic() + timeout
    with psycopg.connect(standby.dsn("postgres"), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()
            if row and row[0]:
                return
            time.sleep(0.05)
    raise RuntimeError("the standby did not catch up")


def start_redis(
    port: int, directory: Path, tls: tuple[Path, Path, Path] | None = None
) -> subprocess.Popen[bytes]:
    """A Redis on loopback that keeps nothing on disk: a restart starts it empty. With tls
    (certificate, key, CA) it listens with TLS 1.3 only, as the redis role runs it."""
    listen = ["--port", str(port)]
    if tls:
        crt, key, ca = (str(p) for p in tls)
        listen = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", crt,
                  "--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no",
                  "--tls-protocols", "TLSv1.3"]  # fmt: skip
    proc = subprocess.Popen(
        [
            "/usr/bin/redis-server",
            *listen,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Only waits until it serves: the certificate's name is the callers' to check.
    client = redis.Redis(
        port=port,
        ssl=bool(tls),
        ssl_ca_certs=str(tls[2]) if tls else None,
        ssl_check_hostname=False,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            client.close()
            return proc
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def started(durable: bool = False, tls: bool = False) -> Iterator[Servers]:
    """tls: PostgreSQL and Redis accept TLS 1.3 only, with certificates from a throwaway CA
    (PostgreSQL still admits plain local clients, as pg_hba does on the hosts)."""
    root = Path(tempfile.mkdtemp(prefix="zapora-test-"))
    ca: Path | None = None
    if tls:
        ca = make_ca(root, "internal-ca")
        crt, key = make_leaf(root, "internal-ca", "server", "IP:127.0.0.1")
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chown(root, pg.pw_uid, pg.pw_gid)
        if tls:
            os.chown(key, pg.pw_uid, pg.pw_gid)
            os.chown(root / "internal-ca.crt", pg.pw_uid, pg.pw_gid)
            os.chown(crt, pg.pw_uid, pg.pw_gid)
    log = root / "postgres.log"
    primary = Postgres(root / "primary", free_port(), log, ca=ca)
    standby = Postgres(root / "standby", free_port(), root / "standby.log", ca=ca)
    redis_port = free_port()
    redis_proc = start_redis(redis_port, root, (crt, key, ca) if ca else None)
    servers = Servers(root, primary, standby, redis_port, redis_proc, ca)
    try:
        _run(
            [
                _pg_bin("initdb"),
                "-D",
                str(primary.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            log,
        )
        with (primary.data / "postgresql.conf").open("a") as conf:
            conf.write(_CONF.format(sock=primary.data))
            if not durable:
                conf.write(_FAST_CONF)
            if ca:
                conf.write(
                    f"ssl = on\nssl_cert_file = '{crt}'\nssl_key_file = '{key}'\n"
                    "ssl_min_protocol_version = 'TLSv1.3'\n"
                )
        (primary.data / "pg_hba.conf").write_text(_HBA)
        primary.start()
        with psycopg.connect(primary.dsn("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE zapora")
        _run(
            [
                _pg_bin("pg_basebackup"),
                "-D",
                str(standby.data),
                "-R",
                "-X",
                "stream",
                "-h",
                "127.0.0.1",
                "-p",
                str(primary.port),
                "-U",
                "postgres",
                "--no-sync",
                "-c",
                "fast",
            ],
            log,
        )
        with (standby.data / "postgresql.conf").open("a") as conf:
            conf.write(f"unix_socket_directories = '{standby.data}'\n")
        standby.start()
        yield servers
    finally:
        standby.stop()
        primary.stop()
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)
