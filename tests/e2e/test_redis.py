"""The Redis tier on the lab: Sentinel, replication, the ACL users, the exporters, a backup
brought back by playbooks/redis-restore.yml, and a Sentinel failover with the old primary
rejoining (these were the checks of the role's molecule scenario, now on the lab).

Probes run from mon1, the Sentinel-only voter, over the network with redis-cli, as the API
reaches Redis: user `zapora` for the API's view, `admin` only where the API has no right
(ROLE). Their passwords come from .lab/secrets, sit on mon1 in a root-only directory for the
module's run and never appear in a command line or an assertion message.

The destructive steps run last and in this order: the restore (it keeps the primary where
it is), then the failover, which leaves the old primary as a connected replica of the new
one. Every wait has a deadline; the module takes well under two minutes.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import httpx
import pytest
import yaml

from tests.e2e.conftest import REPO, Lab, api_client, lab_secret, run_documented, scrape

pytestmark = [pytest.mark.e2e, pytest.mark.lab(shared=("data",))]

PORT = 6379
SENTINEL_PORT = 26379
MASTER = "zapora"
PASS_DIR = "/root/.zapora-e2e-redis"
BACKUP = "/usr/local/sbin/zapora-redis-backup"
SCRATCH_PORT = 6390  # the restore tasks use 6391 (playbooks/redis-restore.yml)
MARK = "----e2e-reply-end----"
# Redis and Sentinel speak TLS only (redis_tls_enabled); the probe host is a Sentinel, so
# it holds the internal CA's certificate the role wrote.
TLS = "--tls --cacert /etc/redis/tls/ca.crt"
FAILOVER_BOUND_S = 15.0
T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One redis-cli command: its address, port, arguments and the ACL user (None: none)."""

    address: str
    args: tuple[str, ...]
    user: str | None = "zapora"
    port: int = PORT


def _cli(call: Call) -> str:
    base = f"redis-cli --no-auth-warning --raw -h {call.address} -p {call.port} {TLS}"
    if call.user is None:
        # Nothing in the environment may log the probe in: it must arrive as nobody.
        return f"env -u REDISCLI_AUTH {base}"
    return f'REDISCLI_AUTH="$(cat {PASS_DIR}/{call.user}.pass)" {base} --user {call.user}'


def ask(lab: Lab, client: str, *calls: Call) -> list[str]:
    """Each call as its own redis-cli (a connection each) in one SSH session on the client:
    the replies in order, errors included (redis-cli prints them and exits 0)."""
    script = "; ".join(f"{_cli(c)} {shlex.join(c.args)} 2>&1; echo {MARK}" for c in calls)
    out = lab.ssh(client, script, timeout=30).stdout
    replies: list[str] = []
    current: list[str] = []
    for line in out.split("\n"):
        if line == MARK:
            replies.append("\n".join(current).strip("\n"))
            current = []
        else:
            current.append(line)
    assert len(replies) == len(calls), out
    return replies


def session(lab: Lab, client: str, address: str, *commands: str, user: str = "zapora") -> list[str]:
    """Several commands on ONE connection (WAIT counts the replicas that have this
    connection's writes, so a WAIT on a connection of its own would prove nothing)."""
    call = Call(address, (), user)
    script = f"printf '%s\\n' {shlex.join(commands)} | {_cli(call)} 2>&1"
    return [line for line in lab.ssh(client, script, timeout=30).stdout.split("\n") if line]


def pairs(reply: str) -> list[dict[str, str]]:
    """SENTINEL MASTER/REPLICAS in --raw form (field, value, ...): one dict per instance."""
    lines = reply.split("\n")
    out: list[dict[str, str]] = []
    for key, value in zip(lines[0::2], lines[1::2], strict=False):
        if key == "name":
            out.append({})
        if out:
            out[-1][key] = value
    return out


def until(probe: Callable[[], T | None], timeout: float, what: Callable[[], str]) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what()}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def client(lab: Lab) -> Iterator[str]:
    """A Sentinel voter that holds no data (mon1): it survives the failover and probes the
    data nodes over the network. The two passwords go in over stdin, into a root-only
    directory, and are removed afterwards."""
    voters = [h for h in lab.groups["redis_sentinel"] if h not in lab.groups["redis"]]
    assert voters, f"no Sentinel-only host in {lab.groups['redis_sentinel']}"
    host = voters[0]
    for user in ("zapora", "admin"):
        put = subprocess.run(
            [
                "docker",
                "exec",
                "-i",
                lab.container(host),
                "sh",
                "-c",
                f"umask 077 && mkdir -p {PASS_DIR} && cat > {PASS_DIR}/{user}.pass",
            ],
            input=lab_secret(f"redis_{user}_password"),
            capture_output=True,
            text=True,
            check=False,
        )
        assert put.returncode == 0, f"could not place {user}'s password on {host}: {put.stderr}"
    yield host
    lab.ssh(host, f"rm -rf {PASS_DIR}", check=False)


def data_nodes(lab: Lab) -> dict[str, str]:
    """Address → host name of the data nodes."""
    return {lab.hosts[h].address: h for h in lab.groups["redis"]}


@dataclass(frozen=True)
class Pair:
    primary: str
    replica: str


def healthy(lab: Lab, client: str) -> tuple[Pair | None, str]:
    """The pair when the tier is whole: every Sentinel names the same data node; the
    client's Sentinel sees it as master with all other Sentinels and the other data node
    as a replica linked to it; that replica reports itself connected to the primary.
    Otherwise None and what was seen."""
    nodes = data_nodes(lab)
    voters = [lab.hosts[h].address for h in lab.groups["redis_sentinel"]]
    here = lab.hosts[client].address
    calls = [
        Call(v, ("SENTINEL", "get-master-addr-by-name", MASTER), port=SENTINEL_PORT) for v in voters
    ]
    calls += [
        Call(here, ("SENTINEL", "MASTER", MASTER), port=SENTINEL_PORT),
        Call(here, ("SENTINEL", "REPLICAS", MASTER), port=SENTINEL_PORT),
    ]
    replies = ask(lab, client, *calls)
    named = {v: r.split("\n") for v, r in zip(voters, replies, strict=False)}
    first = named[voters[0]]
    if any(n != first for n in named.values()):
        return None, f"the Sentinels disagree: {named}"
    primary, port = first[:2]
    if primary not in nodes or port != str(PORT):
        return None, f"the Sentinels name {primary}:{port}, not a data node"
    (replica,) = (a for a in nodes if a != primary)
    master = pairs(replies[-2])
    want = {"ip": primary, "port": str(PORT), "flags": "master"}
    want["num-other-sentinels"] = str(len(voters) - 1)
    if len(master) != 1 or any(master[0].get(k) != v for k, v in want.items()):
        return None, f"SENTINEL MASTER: want {want}, got {master}"
    replicas = pairs(replies[-1])
    want = {"ip": replica, "port": str(PORT), "flags": "slave", "master-link-status": "ok"}
    if len(replicas) != 1 or any(replicas[0].get(k) != v for k, v in want.items()):
        return None, f"SENTINEL REPLICAS: want one {want}, got {replicas}"
    role = ask(lab, client, Call(replica, ("ROLE",), "admin"))[0].split("\n")
    if role[:4] != ["slave", primary, str(PORT), "connected"]:
        return None, f"ROLE of {nodes[replica]}: {role}"
    return Pair(primary, replica), "ok"


def wait_healthy(lab: Lab, client: str, timeout: float) -> Pair:
    seen = ["nothing yet"]

    def probe() -> Pair | None:
        pair, seen[0] = healthy(lab, client)
        return pair

    return until(probe, timeout, lambda: f"Redis is not whole: {seen[0]}")


def wait_api_ready(timeout: float) -> dict[str, object]:
    """/health/ready through the edge answers 200 with Redis ok (the API found the primary
    through Sentinel again)."""
    seen = ["nothing yet"]

    def probe() -> dict[str, object] | None:
        with api_client() as c:
            try:
                r = c.get("/health/ready")
            except httpx.HTTPError as exc:  # a refused or reset connection: ask again
                seen[0] = repr(exc)
                return None
        seen[0] = f"{r.status_code} {r.text}"
        body: dict[str, object] = r.json() if r.status_code == 200 else {}
        checks = body.get("checks")
        return body if isinstance(checks, dict) and checks.get("redis") == "ok" else None

    return until(probe, timeout, lambda: f"/health/ready: {seen[0]}")


@pytest.fixture(scope="module")
def pair(lab: Lab, client: str) -> Pair:
    return wait_healthy(lab, client, 30)


def test_sentinels_name_one_primary_with_its_replica_and_peers(lab: Lab, client: str) -> None:
    """Sentinel, asked as the API user, gives a data node's address; it sees two other
    Sentinels and the other data node as a replica (port 6379, flags slave)."""
    started = time.monotonic()
    pair, seen = healthy(lab, client)
    assert pair is not None, seen
    print(f"primary {pair.primary}, replica {pair.replica} ({time.monotonic() - started:.1f} s)")


def test_a_write_on_the_primary_reaches_the_replica_which_refuses_writes(
    lab: Lab, client: str, pair: Pair
) -> None:
    key, value = f"zapora:e2e:replication:{uuid.uuid4().hex}", uuid.uuid4().hex
    try:
        written = session(lab, client, pair.primary, f"SET {key} {value}", "WAIT 1 2000")
        assert written == ["OK", "1"], written
        on_replica = ask(
            lab,
            client,
            Call(pair.replica, ("GET", key)),
            Call(pair.replica, ("SET", f"zapora:e2e:on-replica:{value}", "x")),
        )
        assert on_replica[0] == value, on_replica
        assert on_replica[1].startswith("READONLY"), on_replica
    finally:
        ask(lab, client, Call(pair.primary, ("DEL", key)))


# What the API never sends: each must be refused for its user (docs/redis.md, ACL users).
FORBIDDEN = [
    ("CONFIG", "GET", "maxmemory"),
    ("CONFIG", "SET", "maxmemory", "1mb"),
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("KEYS", "*"),
    ("SHUTDOWN", "NOSAVE"),
    ("MODULE", "LIST"),
    ("ACL", "LIST"),
    ("REPLICAOF", "NO", "ONE"),
    ("SCRIPT", "FLUSH"),
    ("SAVE",),
    # Keys and channels outside the API's patterns (redis_zapora_key_patterns).
    ("SET", "e2e-outside:key", "x"),
    ("GET", "e2e-outside:key"),
    ("PUBLISH", "e2e-outside:channel", "x"),
]


def test_the_api_user_is_refused_what_the_api_does_not_need(
    lab: Lab, client: str, pair: Pair
) -> None:
    replies = ask(lab, client, *(Call(pair.primary, c) for c in FORBIDDEN))
    not_refused = {
        " ".join(c): r
        for c, r in zip(FORBIDDEN, replies, strict=True)
        if not r.startswith("NOPERM")
    }
    assert not not_refused, f"the API user was not refused: {not_refused}"
    # DEBUG is switched off for every user (enable-debug-command no), which Redis checks
    # before the ACL: either refusal will do.
    debug = ask(lab, client, Call(pair.primary, ("DEBUG", "SLEEP", "0")))[0]
    assert debug.startswith(("NOPERM", "ERR DEBUG command not allowed")), debug
    # The refused SHUTDOWN and REPLICAOF did nothing: the primary still answers as one.
    assert ask(lab, client, Call(pair.primary, ("ROLE",), "admin"))[0].startswith("master")


def test_the_api_user_runs_what_the_api_needs(lab: Lab, client: str, pair: Pair) -> None:
    """The stream (worker), the menu cache's Lua script and hash, the login counter and
    cache invalidation by pub/sub, each on a fresh key inside the API's patterns."""
    tag = uuid.uuid4().hex
    stream, cache, counter = f"zapora:e2e:stream:{tag}", f"menu-items:e2e:{tag}", f"auth:e2e:{tag}"
    script = "return redis.call('HSET', KEYS[1], 'f', 'v')"
    try:
        replies = ask(
            lab,
            client,
            *(
                Call(pair.primary, c)
                for c in [
                    ("XADD", stream, "*", "event", f"probe-{tag}"),
                    ("XGROUP", "CREATE", stream, "g", "0", "MKSTREAM"),
                    ("XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "STREAMS", stream, ">"),
                    ("EVAL", script, "1", cache),
                    ("HGET", cache, "f"),
                    ("INCRBY", counter, "1"),
                    ("INCRBY", counter, "2"),
                    ("EXPIRE", counter, "60"),
                ]
            ),
        )
        entry = replies[0]
        assert entry.count("-") == 1 and entry.replace("-", "").isdigit(), replies
        assert replies[1] == "OK", replies
        assert replies[2].split("\n") == [stream, entry, "event", f"probe-{tag}"], replies
        assert replies[3:] == ["1", "v", "1", "3", "1"], replies
        # PUBLISH counts its receivers: a SUBSCRIBE of the API user must get the message.
        channel, message = f"menu-items:e2e:{tag}", f"hello-{tag}"
        cli = f"redis-cli --no-auth-warning --raw -h {pair.primary} -p {PORT} {TLS} --user zapora"
        out = lab.ssh(
            client,
            f'export REDISCLI_AUTH="$(cat {PASS_DIR}/zapora.pass)"; f=$(mktemp); '
            f"timeout 10 {cli} SUBSCRIBE {channel} >$f 2>&1 & sub=$!; "
            f"for _ in $(seq 50); do n=$({cli} PUBLISH {channel} {message} 2>&1); "
            '[ "$n" = 1 ] && break; sleep 0.1; done; echo "receivers=$n"; '
            f"for _ in $(seq 30); do grep -qx {message} $f && break; sleep 0.1; done; "
            'kill "$sub" 2>/dev/null; wait; cat "$f"; rm -f "$f"',
        ).stdout.split("\n")
        assert "receivers=1" in out and message in out, out
    finally:
        ask(lab, client, Call(pair.primary, ("DEL", stream, cache, counter)))


def test_the_default_user_cannot_log_in(lab: Lab, client: str) -> None:
    """No password, or AUTH as `default`: refused on every data node and every Sentinel."""
    calls = []
    for host in lab.groups["redis"]:
        address = lab.hosts[host].address
        calls += [
            Call(address, ("PING",), None),
            Call(address, ("AUTH", "default", "anything"), None),
        ]
    for host in lab.groups["redis_sentinel"]:
        address = lab.hosts[host].address
        calls += [
            Call(address, ("PING",), None, SENTINEL_PORT),
            Call(address, ("AUTH", "default", "anything"), None, SENTINEL_PORT),
        ]
    replies = ask(lab, client, *calls)
    let_in = {
        f"{c.address}:{c.port} {c.args[0]}": r
        for c, r in zip(calls, replies, strict=True)
        if not r.startswith("NOAUTH" if c.args[0] == "PING" else "WRONGPASS")
    }
    assert not let_in, f"not refused as expected: {let_in}"


def test_each_exporter_reports_redis_up(lab: Lab, client: str) -> None:
    """Scraped from the monitoring host as Prometheus does (HTTPS, the internal CA):
    redis_up is 1 on each node."""
    nodes = {f"https://{address}:9121/metrics": host for address, host in data_nodes(lab).items()}
    for url, body in scrape(lab, *nodes).items():
        up = [line for line in body.split("\n") if line.startswith("redis_up ")]
        assert up == ["redis_up 1"], f"{nodes[url]}: {up}"


def test_min_replicas_to_write_is_the_inventory_value(lab: Lab, client: str) -> None:
    """What the lab can show of NOREPLICAS: the running value is the inventory's
    (0 in the lab, two data nodes; docs/redis.md), so the role passes it through."""
    lab_vars = yaml.safe_load((REPO / "inventory/lab/group_vars/all/redis.yml").read_text())
    want = str(lab_vars["redis_min_replicas_to_write"])
    calls = [Call(a, ("CONFIG", "GET", "min-replicas-to-write"), "admin") for a in data_nodes(lab)]
    replies = ask(lab, client, *calls)
    assert replies == [f"min-replicas-to-write\n{want}"] * len(calls), replies


@dataclass(frozen=True)
class Snapshot:
    object_key: str
    key: str
    value: str
    primary: str


@pytest.fixture(scope="module")
def snapshot(lab: Lab, client: str, pair: Pair) -> Iterator[Snapshot]:
    """A key written, then a backup run on the primary as the timer runs it."""
    tag = uuid.uuid4().hex
    key = f"zapora:e2e:before-backup:{tag}"
    assert ask(lab, client, Call(pair.primary, ("SET", key, tag))) == ["OK"]
    host = data_nodes(lab)[pair.primary]
    out = lab.ssh(host, f"{BACKUP} backup", timeout=120).stdout
    result = json.loads(out.splitlines()[-1])
    assert result["backup"] == "uploaded", result
    yield Snapshot(result["key"], key, tag, pair.primary)
    ask(lab, client, Call(wait_healthy(lab, client, 60).primary, ("DEL", key)))


def test_the_backup_loads_into_a_scratch_redis(lab: Lab, snapshot: Snapshot, pair: Pair) -> None:
    """The object fetched from S3 on the other data node, loaded by a throwaway
    redis-server on loopback (no AOF, no saves), holds the key; the server is gone after."""
    host = data_nodes(lab)[pair.replica]
    port = SCRATCH_PORT
    script = f"""set -eu
if ss -Htln "sport = :{port}" | grep -q .; then echo "port {port} is taken"; exit 1; fi
d=$(mktemp -d /var/lib/redis/e2e-scratch.XXXXXX)
trap 'redis-cli -p {port} SHUTDOWN NOSAVE >/dev/null 2>&1 || true; rm -rf "$d"' EXIT
{BACKUP} fetch {shlex.quote(snapshot.object_key)} "$d/dump.rdb" >/dev/null
chown -R redis:redis "$d"
runuser -u redis -- redis-server --port {port} --bind 127.0.0.1 --dir "$d" \
  --dbfilename dump.rdb --appendonly no --save '' --daemonize yes \
  --pidfile "$d/pid" --logfile "$d/log"
for _ in $(seq 50); do
  [ "$(redis-cli -p {port} PING 2>/dev/null)" = PONG ] && break; sleep 0.2
done
echo "value=$(redis-cli -p {port} --raw GET {snapshot.key})"
"""
    out = lab.ssh(host, script, timeout=60).stdout
    assert f"value={snapshot.value}" in out.split("\n"), out
    left = lab.ssh(host, f"ss -Htln 'sport = :{port}'; ls -d /var/lib/redis/e2e-scratch.* || true")
    assert left.stdout.strip() == "", f"the scratch Redis on {host} was left: {left.stdout}"


# Both take Redis from the API for a moment, and ask the API through the edge after.
@pytest.mark.lab(shared=("app",), exclusive=("data",))
def test_redis_restore_playbook_brings_the_snapshot_back(
    lab: Lab, client: str, snapshot: Snapshot
) -> None:
    """playbooks/redis-restore.yml as docs/operator-guide.md shows it (the object's key,
    confirmed on the command line): the primary has the snapshot's key and not a key written
    after it, and the Sentinels name the same primary with the replica resynchronised."""
    later = f"zapora:e2e:after-backup:{uuid.uuid4().hex}"
    assert ask(lab, client, Call(snapshot.primary, ("SET", later, "x"))) == ["OK"]
    nodes = data_nodes(lab)
    aside = "ls -d /var/lib/redis/before-restore-* 2>/dev/null || true"
    kept = {h: set(lab.ssh(h, aside).stdout.split()) for h in nodes.values()}
    started = time.monotonic()
    try:
        run = run_documented(
            "redis-restore.yml",
            redis_restore_confirm="yes",
            redis_restore_key=snapshot.object_key,
            timeout=300,
        )
        took = time.monotonic() - started
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        pair = wait_healthy(lab, client, 60)
        assert pair.primary == snapshot.primary, f"the restore moved the primary: {pair}"
        replies = ask(
            lab,
            client,
            Call(pair.primary, ("GET", snapshot.key)),
            Call(pair.primary, ("EXISTS", later)),
            Call(pair.replica, ("GET", snapshot.key)),
        )
        assert replies == [snapshot.value, "0", snapshot.value], replies
        wait_api_ready(60)
        # The data the restore replaced stays beside it (docs/operator-guide.md): the
        # primary's AOF in a new before-restore-<time> directory.
        primary = nodes[snapshot.primary]
        new = set(lab.ssh(primary, aside).stdout.split()) - kept[primary]
        assert len(new) == 1, f"{primary}: new before-restore directories {new}"
        lab.ssh(primary, f"test -d {next(iter(new))}/appendonlydir")
    finally:
        # Only the directories this run made: the lab stays as it was.
        for host, old in kept.items():
            made = set(lab.ssh(host, aside).stdout.split()) - old
            if made:
                lab.ssh(host, f"rm -rf {shlex.join(sorted(made))}")
    print(f"redis-restore.yml: {took:.1f} s, healthy {time.monotonic() - started:.1f} s")


@pytest.mark.lab(shared=("app",), exclusive=("data",))
def test_failover_promotes_the_replica_and_the_old_primary_rejoins(lab: Lab, client: str) -> None:
    before = wait_healthy(lab, client, 60)
    nodes = data_nodes(lab)
    killed = nodes[before.primary]
    tag = uuid.uuid4().hex
    key, after_key = f"zapora:e2e:before-failover:{tag}", f"zapora:e2e:after-failover:{tag}"
    written = session(lab, client, before.primary, f"SET {key} kept", "WAIT 1 2000")
    assert written == ["OK", "1"], f"the replica did not acknowledge the write: {written}"
    here = lab.hosts[client].address
    sentinel = _cli(Call(here, (), "zapora", SENTINEL_PORT))
    role = _cli(Call(before.replica, (), "admin"))
    try:
        # SIGKILL (no clean shutdown), then keep it down: the unit has Restart=always.
        kill = lab.ssh(
            killed,
            'pid=$(systemctl show -p MainPID --value redis-server); [ "$pid" -gt 0 ]; '
            'kill -9 "$pid"; date +%s.%N; systemctl stop redis-server',
        )
        killed_at = float(kill.stdout.split()[0])
        # Polled on the client every 0.1 s: Sentinel names the replica and it says master.
        watch = lab.ssh(
            client,
            f"end=$(( $(date +%s) + {int(FAILOVER_BOUND_S) + 10} )); "
            'while [ "$(date +%s)" -lt "$end" ]; do '
            f"m=$({sentinel} SENTINEL get-master-addr-by-name {MASTER} 2>/dev/null | head -1); "
            f'if [ "$m" = {before.replica} ] && '
            f'[ "$({role} ROLE 2>/dev/null | head -1)" = master ]; then date +%s.%N; exit 0; fi; '
            "sleep 0.1; done; echo never",
            timeout=60,
        ).stdout.strip()
        assert watch != "never", f"Sentinel did not promote {nodes[before.replica]}"
        took = float(watch) - killed_at
        print(f"failover: {took:.1f} s from SIGKILL of {killed} to {nodes[before.replica]} master")
        assert took <= FAILOVER_BOUND_S, f"failover took {took:.1f} s"
        kept = ask(lab, client, Call(before.replica, ("GET", key)))
        assert kept == ["kept"], f"the acknowledged key is not on the new primary: {kept}"
    finally:
        lab.ssh(killed, "systemctl start redis-server")
    rejoined = time.monotonic()

    def joined() -> list[str] | None:
        seen = ask(lab, client, Call(before.primary, ("ROLE",), "admin"))[0].split("\n")
        return seen if seen[:4] == ["slave", before.replica, str(PORT), "connected"] else None

    until(joined, 60, lambda: f"{killed} is not a connected replica of the new primary")
    written = session(lab, client, before.replica, f"SET {after_key} back", "WAIT 1 5000")
    assert written == ["OK", "1"], written
    assert ask(lab, client, Call(before.primary, ("GET", after_key))) == ["back"]
    after = wait_healthy(lab, client, 60)
    assert after == Pair(before.replica, before.primary), after
    print(f"{killed} rejoined as a replica in {time.monotonic() - rejoined:.1f} s after its start")
    ask(lab, client, Call(after.primary, ("DEL", key, after_key)))
    wait_api_ready(60)
