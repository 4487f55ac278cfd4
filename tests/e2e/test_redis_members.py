"""A Redis data node and a Sentinel leave the tier and come back, as docs/operator-guide.md
shows it ("Remove a Redis node or a Sentinel", "Add a Redis node or a Sentinel"), while a
customer posts orders through the edge.

The data node that is a replica leaves the `redis` group and mon1 (the Sentinel-only voter)
the `redis_sentinel` group (an overlay of the lab's inventory, both kept in
`redis_removed`); `redis-member-remove.yml` stops the replica's redis-server, exporter and
backup timer and mon1's Sentinel, and resets the two Sentinels left one at a time: each
then lists no replica and only the other one. A second run changes nothing. While the
replica is away a key is written on the primary. `site.yml --tags redis` with the whole
inventory adds both back: the data node is a connected replica of the same primary (never
a second master) with the key written while it was away and one written after it came
back, and every Sentinel sees two others and one replica. The order writer fails 0. A
`finally` re-runs `site.yml --tags redis` when the tier is not whole.

Taking the primary's data node out is refused, naming the variable and how to move the
primary, before anything stops.

On the lab (timings printed), three runs: the first test 75-84 s (the removal 8-11 s,
each Sentinel whole again 0.9-2.0 s after its reset; the second run 4-5 s; site.yml
--tags redis 58-63 s), the refusal 4 s.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from dataclasses import dataclass

import pytest

from tests.e2e.conftest import Lab, run_documented
from tests.e2e.order_writer import OrderWriter
from tests.e2e.test_redis import (  # noqa: F401 - the client fixture
    MASTER,
    SENTINEL_PORT,
    Call,
    ask,
    client,
    data_nodes,
    healthy,
    pairs,
    session,
    until,
    wait_api_ready,
    wait_healthy,
)
from tests.e2e.test_site_idempotent import assert_nothing_changed
from tests.e2e.test_tier_playbooks import inventory_without, timed

pytestmark = [pytest.mark.e2e, pytest.mark.lab(shared=("app",), exclusive=("data",))]

# What runs on a data node and on a Sentinel (the redis role).
DATA_UNITS = ("redis-server", "prometheus-redis-exporter", "zapora-redis-backup.timer")
SENTINEL_UNITS = ("redis-sentinel",)


@dataclass(frozen=True)
class View:
    """What one Sentinel sees: the primary's address, the replicas' and the other
    Sentinels' addresses with their flags, and its counts."""

    primary: str
    replicas: dict[str, str]
    sentinels: dict[str, str]
    num_slaves: int
    num_other_sentinels: int


def views(lab: Lab, probe: str, hosts: list[str]) -> dict[str, View]:
    """SENTINEL MASTER / REPLICAS / SENTINELS on each of `hosts`' Sentinels, as the API user."""
    calls = [
        Call(lab.hosts[h].address, ("SENTINEL", what, MASTER), port=SENTINEL_PORT)
        for h in hosts
        for what in ("MASTER", "REPLICAS", "SENTINELS")
    ]
    replies = ask(lab, probe, *calls)
    out: dict[str, View] = {}
    for i, host in enumerate(hosts):
        master, replicas, sentinels = (pairs(r) for r in replies[3 * i : 3 * i + 3])
        if len(master) != 1:  # no answer (a stopped Sentinel): nothing seen
            out[host] = View(replies[3 * i][:200], {}, {}, -1, -1)
            continue
        out[host] = View(
            primary=master[0]["ip"],
            replicas={r["ip"]: r["flags"] for r in replicas},
            sentinels={s["ip"]: s["flags"] for s in sentinels},
            num_slaves=int(master[0]["num-slaves"]),
            num_other_sentinels=int(master[0]["num-other-sentinels"]),
        )
    return out


def unit_states(lab: Lab, host: str, units: tuple[str, ...]) -> dict[str, str]:
    """`systemctl is-active` and `is-enabled` of each unit on `host`: "active/enabled"."""
    out = lab.ssh(
        host,
        "; ".join(
            f"echo {u}=$(systemctl is-active {u})/$(systemctl is-enabled {u} 2>/dev/null)"
            for u in units
        ),
        check=False,
    ).stdout
    return dict(re.findall(r"^(\S+)=(\S*/\S*)$", out, re.M))


def everyone_sees_the_tier(lab: Lab, probe: str) -> dict[str, View] | None:
    """Every Sentinel's view when each sees the two others and the one replica, else None."""
    seen = views(lab, probe, lab.groups["redis_sentinel"])
    whole = all(v.num_other_sentinels == 2 and v.num_slaves == 1 for v in seen.values())
    return seen if whole else None


def whole(lab: Lab, probe: str) -> bool:
    """The tier as the other tests expect it: one primary and its connected replica, and
    every Sentinel sees the two others and the one replica."""
    return healthy(lab, probe)[0] is not None and everyone_sees_the_tier(lab, probe) is not None


def heal(lab: Lab, probe: str) -> None:
    """Leave the lab whole, also after a failure half-way: site.yml --tags redis with the
    whole inventory starts what the removal stopped."""
    if whole(lab, probe):
        return
    healed = timed(
        "site.yml --tags redis (repair)", lambda: run_documented("site.yml", "--tags redis")
    )
    until(
        lambda: True if whole(lab, probe) else None,
        120,
        lambda: f"the Redis tier whole again (rc {healed.returncode}: {healed.stdout[-2000:]})",
    )


def test_a_replica_and_a_sentinel_leave_and_come_back_under_load(
    lab: Lab,
    client: str,  # noqa: F811 - pytest fixture
) -> None:
    started = time.monotonic()
    pair = wait_healthy(lab, client, 60)
    nodes = data_nodes(lab)
    replica = nodes[pair.replica]
    # The client fixture's probe host is the Sentinel-only voter (mon1): its Sentinel
    # leaves, the host stays (redis-cli and the CA are still there for the probes).
    voter = client
    staying = [h for h in lab.groups["redis_sentinel"] if h != voter]
    addresses = {h: lab.hosts[h].address for h in lab.groups["redis_sentinel"]}
    all_ = lab.groups["redis_sentinel"]
    away = f"zapora:e2e:members:away:{uuid.uuid4().hex}"
    back = f"zapora:e2e:members:back:{uuid.uuid4().hex}"
    overlay = inventory_without(
        {replica: ("redis",), voter: ("redis_sentinel",)}, kept_in="redis_removed"
    )
    try:
        with OrderWriter(limit_s=600) as writer:
            removed = timed(
                "redis-member-remove.yml",
                lambda: run_documented(
                    "redis-member-remove.yml",
                    inventory=overlay,
                    timeout=300,
                    redis_remove_members=[replica, voter],
                ),
            )
            assert removed.returncode == 0, removed.stdout[-4000:] + removed.stderr[-2000:]
            resets = re.findall(r"(\w+): reset; whole again after (\d+) ms", removed.stdout)
            print(f"Sentinels reset, ms until each saw what stays again: {dict(resets)}")
            # The Sentinels left forgot the replica and mon1: no replica, the other one only.
            seen = views(lab, client, staying)
            for host, view in seen.items():
                others = {addresses[h] for h in staying if h != host}
                assert view.primary == pair.primary, (host, view)
                assert view.replicas == {} and view.num_slaves == 0, (host, view)
                assert set(view.sentinels) == others and view.num_other_sentinels == 1, (host, view)
            # Sentinel's state is put aside: it comes back fresh, monitoring today's primary.
            files = lab.ssh(voter, "ls /etc/redis/zapora-sentinel/", check=False).stdout.split()
            assert "sentinel.conf" not in files, files
            assert any(f.startswith("sentinel.conf.removed-") for f in files), files
            for host, units in ((replica, DATA_UNITS), (voter, SENTINEL_UNITS)):
                states = unit_states(lab, host, units)
                assert set(states) == set(units), (host, states)
                for unit, state in states.items():
                    assert state == "inactive/disabled", f"{unit} on {host}: {state}"
            # The primary keeps serving alone; this key reaches the replica when it is back.
            assert session(lab, client, pair.primary, f"SET {away} 1") == ["OK"]

            again = timed(
                "redis-member-remove.yml (again: no change)",
                lambda: run_documented(
                    "redis-member-remove.yml",
                    inventory=overlay,
                    timeout=300,
                    redis_remove_members=[replica, voter],
                ),
            )
            assert_nothing_changed(lab, again, {"localhost", *staying, nodes[pair.primary]})

            added = timed(
                "site.yml --tags redis (adds both back)",
                lambda: run_documented("site.yml", "--tags redis", timeout=600),
            )
            assert added.returncode == 0, added.stdout[-4000:] + added.stderr[-2000:]
            rejoined = time.monotonic()
            # A replica of the same primary, connected; every Sentinel names that primary.
            now = wait_healthy(lab, client, 90)
            assert now == pair, f"the primary moved or a second one appeared: {pair} -> {now}"
            print(f"whole again {time.monotonic() - rejoined:.1f} s after site.yml --tags redis")
            seen = until(
                lambda: everyone_sees_the_tier(lab, client),
                60,
                lambda: f"every Sentinel to see 2 others and 1 replica: {views(lab, client, all_)}",
            )
            for host, view in seen.items():
                others = {a for h, a in addresses.items() if h != host}
                assert view.primary == pair.primary, (host, view)
                assert view.replicas == {pair.replica: "slave"}, (host, view)
                assert view.sentinels == dict.fromkeys(others, "sentinel"), (host, view)
            written = session(lab, client, pair.primary, f"SET {back} 1", "WAIT 1 2000")
            assert written == ["OK", "1"], written
            on_replica = ask(lab, client, Call(pair.replica, ("MGET", away, back)))[0]
            assert on_replica.split("\n") == ["1", "1"], on_replica
            wait_api_ready(60)
        print(writer.summary())
        assert writer.failed == 0, f"{writer.summary()}: {writer.failures[:10]}"
        assert writer.served > 0, writer.summary()
        assert writer.missing(lab) == [], "acknowledged orders are missing"
    finally:
        shutil.rmtree(overlay, ignore_errors=True)
        heal(lab, client)
        # The state file the removal put aside (the Sentinel came back with a new one).
        lab.ssh(voter, "rm -f /etc/redis/zapora-sentinel/sentinel.conf.removed-*", check=False)
        primary = healthy(lab, client)[0]
        if primary is not None:
            ask(lab, client, Call(primary.primary, ("DEL", away, back)))
        print(f"test_redis_members: {time.monotonic() - started:.0f} s in all")


def test_removing_the_primary_is_refused_naming_the_variable(
    lab: Lab,
    client: str,  # noqa: F811 - pytest fixture
) -> None:
    """The primary's data node taken out of `redis`: refused before anything stops, with
    how to move the primary first."""
    pair = wait_healthy(lab, client, 60)
    primary = data_nodes(lab)[pair.primary]
    before = views(lab, client, lab.groups["redis_sentinel"])
    overlay = inventory_without({primary: ("redis",)}, kept_in="redis_removed")
    try:
        run = timed(
            "redis-member-remove.yml (the primary)",
            lambda: run_documented(
                "redis-member-remove.yml",
                inventory=overlay,
                timeout=300,
                redis_remove_members=[primary],
            ),
        )
        out = " ".join(run.stdout.split())
        assert run.returncode != 0, run.stdout[-3000:]
        for words in ("names the Redis primary", "SENTINEL FAILOVER zapora"):
            assert words in out, f"{words!r} missing: {run.stdout[-3000:]}"
        assert unit_states(lab, primary, DATA_UNITS[:1]) == {"redis-server": "active/enabled"}
        assert views(lab, client, lab.groups["redis_sentinel"]) == before
    finally:
        shutil.rmtree(overlay, ignore_errors=True)
        heal(lab, client)
