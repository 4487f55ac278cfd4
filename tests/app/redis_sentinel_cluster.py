"""Real redis-server and redis-sentinel processes on loopback, configured by the redis role.

The configuration files are the role's own templates (roles/redis/templates) rendered with
the role's defaults, so the ACL the API runs under here is the one the hosts get. Only what
a loopback test must change is overridden on the command line (ports, directories, bind).
Used by tests/app/test_redis_sentinel.py and bench/redis_failover.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import redis
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "redis"
MASTER = "zapora"
PASSWORDS = {
    "admin": "admin-pw-0123456789abcdef",
    "zapora": "zapora-pw-0123456789abcdef",
    "replication": "repl-pw-0123456789abcdef",
    "sentinel": "sentinel-pw-0123456789abcdef",
    "exporter": "exporter-pw-0123456789abcdef",
    "backup": "backup-pw-0123456789abcdef",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def role_defaults() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    return values


def server_version() -> tuple[int, ...]:
    out = subprocess.run(
        ["/usr/bin/redis-server", "--version"], capture_output=True, text=True
    ).stdout
    version = out.split("v=", 1)[1].split()[0]
    return tuple(int(p) for p in version.split("."))


# Commands in the role's lists that older servers (the test machine may have Redis 7.0) do
# not know; a server refuses an ACL naming an unknown command, so they are left out there.
_NEWER_COMMANDS = {"client|setinfo": (7, 2)}


def known_commands(commands: list[str]) -> list[str]:
    version = server_version()
    dropped = [c for c in commands if version < _NEWER_COMMANDS.get(c, (0,))]
    if dropped:
        print(f"note: redis-server {version} does not know {dropped}; left out of the test ACL")
    return [c for c in commands if c not in dropped]


def _render(template: str, variables: dict[str, Any]) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROLE / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["comment"] = lambda text: f"# {text}"
    env.filters["hash"] = lambda text, algo: hashlib.new(algo, text.encode()).hexdigest()
    return env.get_template(template).render(
        ansible_managed="rendered for a loopback test", **variables
    )


@dataclass
class Proc:
    name: str
    port: int
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_as_redis
            )
        _wait_port(self.port)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _as_redis() -> None:
    # redis-server refuses nothing as root, but the files it writes are then root's; run as
    # the redis user when the tests run as root and it exists, like the hosts do.
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            user = pwd.getpwnam("redis")
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)


def _wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class Cluster:
    root: Path
    nodes: list[Proc]
    sentinels: list[Proc]
    variables: dict[str, Any]
    password_file: Path
    _clients: list[redis.Redis] = field(default_factory=list)

    @property
    def sentinel_addresses(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def admin(self, port: int) -> redis.Redis:
        client = redis.Redis(
            port=port, username="admin", password=PASSWORDS["admin"], socket_timeout=2
        )
        self._clients.append(client)
        return client

    def sentinel(self, index: int = 0) -> redis.Redis:
        client = redis.Redis(
            port=self.sentinels[index].port,
            username="sentinel",
            password=PASSWORDS["sentinel"],
            socket_timeout=2,
        )
        self._clients.append(client)
        return client

    def primary_port(self) -> int:
        """The primary's port as the Sentinels see it (a majority must agree)."""
        seen: dict[int, int] = {}
        for i in range(len(self.sentinels)):
            with contextlib.suppress(redis.RedisError):
                _host, port = self.sentinel(i).sentinel_get_master_addr_by_name(MASTER)
                seen[int(port)] = seen.get(int(port), 0) + 1
        if not seen:
            raise RuntimeError("no Sentinel answers")
        return max(seen, key=lambda p: seen[p])

    def node(self, port: int) -> Proc:
        return next(n for n in self.nodes if n.port == port)

    def is_writable_primary(self, port: int) -> bool:
        try:
            role = self.admin(port).execute_command("ROLE")
        except redis.RedisError:
            return False
        return bool(role and role[0] == b"master")

    def wait_for_failover(self, old_port: int, timeout: float = 30) -> float:
        """Seconds until the Sentinels name another node and that node is a primary."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            with contextlib.suppress(RuntimeError):
                port = self.sentinel(0).sentinel_get_master_addr_by_name(MASTER)[1]
                if int(port) != old_port and self.is_writable_primary(int(port)):
                    return time.monotonic() - start
            time.sleep(0.05)
        raise TimeoutError(f"no failover away from {old_port} within {timeout} s")

    def wait_replicas_connected(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, RuntimeError):
                info = self.admin(self.primary_port()).info("replication")
                online = [
                    v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                ]
                if sum(1 for v in online if v.get("state") == "online") >= count:
                    known = self.sentinel(0).sentinel_master(MASTER)
                    if int(known["num-slaves"]) >= count:
                        return
            time.sleep(0.1)
        raise TimeoutError(f"fewer than {count} replicas online after {timeout} s")

    def close_clients(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()


@contextlib.contextmanager
def started(data_nodes: int = 3, sentinels: int = 3, **overrides: Any) -> Iterator[Cluster]:
    """data_nodes redis-servers (the first is primary) and sentinels Sentinels, quorum 2."""
    root = Path(tempfile.mkdtemp(prefix="zapora-redis-"))
    with contextlib.suppress(KeyError):
        if os.geteuid() == 0:
            user = pwd.getpwnam("redis")
            os.chown(root, user.pw_uid, user.pw_gid)
    variables = {
        **role_defaults(),
        "redis_announce_address": "127.0.0.1",
        "redis_node_address": "127.0.0.1",
        "inventory_hostname": "loopback",
        **{f"redis_{name}_password": pw for name, pw in PASSWORDS.items()},
        "redis_sentinel_quorum": min(2, sentinels),
        # Plain TCP on loopback: the clients here (tests, bench/redis_failover.py) speak it;
        # the API's TLS client is tested against a TLS-only Redis in test_redis_tls.py.
        "redis_tls_enabled": False,
        **overrides,
    }
    for name in ("redis_zapora_commands", "redis_zapora_sentinel_commands"):
        variables[name] = known_commands(variables[name])
    password_file = root / "zapora.pass"
    password_file.write_text(PASSWORDS["zapora"] + "\n")
    node_ports = [free_port() for _ in range(data_nodes)]
    nodes: list[Proc] = []
    for port in node_ports:
        d = root / f"redis-{port}"
        d.mkdir()
        (d / "redis.conf").write_text(_render("redis.conf.j2", {**variables, "redis_port": port}))
        (d / "users.acl").write_text(_render("users.acl.j2", variables))
        argv = [
            "/usr/bin/redis-server",
            str(d / "redis.conf"),
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(d)),
            *("--aclfile", str(d / "users.acl"), "--supervised", "no"),
            *("--pidfile", str(d / "redis.pid"), "--logfile", ""),
            *("--save", "", "--maxmemory", "64mb"),
        ]
        nodes.append(Proc(f"redis-{port}", port, argv, d / "log"))
    sentinel_procs: list[Proc] = []
    cluster = Cluster(root, nodes, sentinel_procs, variables, password_file)
    for d in [root] + [n.log.parent for n in nodes]:
        with contextlib.suppress(KeyError):
            if os.geteuid() == 0:
                user = pwd.getpwnam("redis")
                for path in [d, *d.iterdir()]:
                    os.chown(path, user.pw_uid, user.pw_gid)
    try:
        for n in nodes:
            n.start()
        primary = node_ports[0]
        for n in nodes[1:]:
            cluster.admin(n.port).execute_command("REPLICAOF", "127.0.0.1", primary)
        for _ in range(sentinels):
            port = free_port()
            d = root / f"sentinel-{port}"
            d.mkdir()
            conf = _render(
                "sentinel.conf.j2",
                {
                    **variables,
                    "redis_sentinel_port": port,
                    "redis_port": primary,
                    "redis_primary_address": "127.0.0.1",
                },
            )
            (d / "sentinel.conf").write_text(conf)
            if os.geteuid() == 0:
                with contextlib.suppress(KeyError):
                    user = pwd.getpwnam("redis")
                    for path in [d, d / "sentinel.conf"]:
                        os.chown(path, user.pw_uid, user.pw_gid)
            argv = [
                "/usr/bin/redis-server",
                str(d / "sentinel.conf"),
                "--sentinel",
                *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(d)),
                *("--supervised", "no", "--logfile", ""),
            ]
            proc = Proc(f"sentinel-{port}", port, argv, d / "log")
            proc.start()
            sentinel_procs.append(proc)
        cluster.wait_replicas_connected(data_nodes - 1)
        _wait_sentinels_know_each_other(cluster, sentinels - 1)
        yield cluster
    finally:
        cluster.close_clients()
        for p in sentinel_procs + nodes:
            p.stop()
        shutil.rmtree(root, ignore_errors=True)


def _wait_sentinels_know_each_other(cluster: Cluster, others: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = []
        for i in range(len(cluster.sentinels)):
            with contextlib.suppress(redis.RedisError):
                counts.append(
                    int(cluster.sentinel(i).sentinel_master(MASTER)["num-other-sentinels"])
                )
        if len(counts) == len(cluster.sentinels) and min(counts) >= others:
            return
        time.sleep(0.1)
    raise TimeoutError("the Sentinels did not find each other")


def rejoin(cluster: Cluster, port: int, timeout: float = 30) -> None:
    """Start a killed node again and wait until it is a replica in sync with the primary."""
    cluster.node(port).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, RuntimeError):
            role = cluster.admin(port).execute_command("ROLE")
            in_sync = role[0] == b"slave" and role[3] == b"connected"
            if in_sync and int(role[2]) == cluster.primary_port():
                return
        time.sleep(0.1)
    raise TimeoutError(f"node {port} did not rejoin as a replica")
