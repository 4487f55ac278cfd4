"""Faults of the data tier as the lab can make them, and the checks that it is whole again:
shared by tests/e2e/test_failover.py and bench/failover.py.

Every question goes to a host the fault spared (a frozen host's SSH would hang), and
every wait is bounded.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

from tests.e2e.conftest import Lab

PATRONICTL = "patronictl -c /etc/patroni/config.yml"
ETCDCTL = (
    "etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/etcd/pki/ca.crt"
    " --cert=/etc/etcd/pki/member.crt --key=/etc/etcd/pki/member.key"
    " --dial-timeout=3s --command-timeout=5s"
)
SENTINEL_CONF = "/etc/redis/zapora-sentinel/sentinel.conf"


def patroni_members(lab: Lab, spare: str = "") -> list[dict[str, object]]:
    """Patroni's members as a PostgreSQL host other than `spare` sees them ([] if none
    answers within 15 s)."""
    for host in lab.groups["postgres"]:
        if host == spare:
            continue
        try:
            out = lab.ssh(host, f"{PATRONICTL} list -f json", check=False, timeout=15)
        except subprocess.TimeoutExpired:
            continue
        if out.returncode == 0:
            members: list[dict[str, object]] = json.loads(out.stdout)
            return members
    return []


def patroni_leader(lab: Lab, spare: str = "") -> str:
    """The leader by Patroni's member list; with `spare` (a host under a fault), the other
    host whose own REST API answers 200 to /primary: patronictl may ask the frozen host's
    etcd member first and wait, the REST API of the new leader answers the moment it holds
    the lock."""
    if not spare:
        members = patroni_members(lab)
        return next((str(m["Member"]) for m in members if m["Role"] == "Leader"), "")
    for host in lab.groups["postgres"]:
        if host == spare:
            continue
        # Patroni's REST API is HTTPS with a certificate from the internal CA.
        url = f"https://{lab.hosts[host].address}:8008/primary"
        probe = (
            'python3 -c "import ssl, urllib.request; urllib.request.urlopen('
            f"'{url}', timeout=2, context=ssl.create_default_context("
            "cafile='/etc/postgresql/pki/ca.crt'))\""
        )
        try:
            if lab.ssh(host, probe, check=False, timeout=15).returncode == 0:
                return host
        except subprocess.TimeoutExpired:
            continue
    return ""


def patroni_whole(lab: Lab) -> bool:
    """A leader and every other member a streaming replica."""
    members = patroni_members(lab)
    roles = [m["Role"] for m in members]
    return (
        len(members) == len(lab.groups["postgres"])
        and roles.count("Leader") == 1
        and all(m["State"] == "streaming" for m in members if m["Role"] != "Leader")
    )


def etcd_leader(lab: Lab) -> str:
    """The etcd member (its name, the inventory host) that leads etcd's Raft, asked on the
    first etcd host ("" when it does not answer)."""
    on = lab.groups["etcd"][0]
    status = lab.ssh(on, f"{ETCDCTL} endpoint status -w json", check=False, timeout=30)
    members = lab.ssh(on, f"{ETCDCTL} member list -w json", check=False, timeout=30)
    if status.returncode != 0 or members.returncode != 0:
        return ""
    leader = json.loads(status.stdout)[0]["Status"]["leader"]
    names = {m["ID"]: str(m.get("name", "")) for m in json.loads(members.stdout)["members"]}
    return names.get(leader, "")


def redis_primary(lab: Lab) -> str:
    """The Redis data node the Sentinel-only voter names primary (its rewritten config)."""
    voter = next(h for h in lab.groups["redis_sentinel"] if h not in lab.groups["redis"])
    line = lab.ssh(voter, f"grep '^sentinel monitor' {SENTINEL_CONF}").stdout.split()
    address = line[3]
    return next(h for h in lab.groups["redis"] if lab.hosts[h].address == address)


def docker(*args: str) -> None:
    subprocess.run(["docker", *args], check=True, capture_output=True, timeout=60)


def wait_until(probe: Callable[[], object], timeout: float, what: str) -> float:
    """Poll `probe()` every second until it is true; the seconds it took. AssertionError
    naming `what` after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if probe():
            return time.monotonic() - started
        time.sleep(1)
    raise AssertionError(f"{what} not within {timeout:.0f} s")
