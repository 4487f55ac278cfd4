"""A changed setting in every tier at once, applied as docs/operator-guide.md shows it ("Change
a setting"), while a customer posts orders through the edge.

One group_vars file in an overlay of the lab's inventory (the operator's edit of group_vars)
changes one setting per tier, and

    ansible-playbook -i <inventory> playbooks/site.yml --tags etcd,postgresql,redis,nginx,prometheus

runs once. What each change needs, and what the test asserts of it:

- etcd (`etcd_heartbeat_interval`, read at start): every member restarted, one at a time.
- PostgreSQL (`shared_buffers` through `postgresql_parameters_custom`, read at start): every
  member runs the new value with nothing left pending; the replica restarted first, then one
  planned switchover (the timeline moves by exactly one) and the old primary restarted as a
  replica.
- Redis data nodes (`redis_maxmemory`): every node restarted, at most one Sentinel failover.
- Sentinel (`redis_sentinel_down_after_ms`): applied at run time (SENTINEL SET, which
  Sentinel persists), no Sentinel restarted: none of the role's Sentinel settings needs one.
- nginx (`nginx_keepalive_timeout`): a reload (new workers, the same master process).
- Prometheus (`prometheus_retention_time`, a command-line flag): restarted with the new flag.

Throughout, a customer posts an order every PACE_S s through the edge, each with its own
Idempotency-Key, sent once: every order must be answered 201 (0 failed client requests), and
every acknowledged one be in the database, none doubled. PostgreSQL's planned switchover
leaves a second or two with no primary; an order whose connection the old primary closed
is run once more by the API on a fresh connection (docs/postgresql.md, "Connections lost
under a write"), and one that asks for a connection in the gap waits for the new primary
(the pool's timeout). Before that retry, one order of 149 was answered 503 in a clean-clone
CI run. The answers are printed.

The lab keeps the changed values: putting them back is a second rolling change of every
tier (about 240 s of the data tier held alone), which proved nothing the first did not. So
scripts/e2e-suite.sh runs this file last, alone, after every test that runs site.yml with
the lab's inventory or reads these settings, and the test removes the lab's converge stamp
(.lab/site-converged): the next `make lab` runs site.yml, which puts the lab's values back.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import PROMETHEUS_URL, REPO, Lab, run_documented
from tests.e2e.order_writer import PACE_S, OrderWriter
from tests.e2e.test_database_etcd_outage import patroni_status
from tests.e2e.test_monitoring import get_json
from tests.e2e.test_redis import (  # noqa: F401 - the client fixture
    MASTER,
    SENTINEL_PORT,
    Call,
    ask,
    client,
    data_nodes,
    pairs,
    wait_api_ready,
    wait_healthy,
)
from tests.e2e.test_redis_daytwo import config_epoch, node_state, overlay_with
from tests.e2e.test_tier_playbooks import wait_for, whole

pytestmark = [pytest.mark.e2e, pytest.mark.lab(shared=("app",), exclusive=("data",))]

TAGS = "--tags etcd,postgresql,redis,nginx,prometheus"
# scripts/lab-converge.sh skips site.yml while this names the lab's inputs.
CONVERGE_STAMP = REPO / ".lab" / "site-converged"


@dataclass(frozen=True)
class Settings:
    """One value per tier: the lab's, or the operator's change."""

    etcd_heartbeat_ms: int
    shared_buffers: str
    redis_maxmemory_bytes: str
    sentinel_down_after_ms: str
    nginx_keepalive: str
    prometheus_retention: str


# The lab's values (inventory/lab and the roles' defaults; shared_buffers is 25 % of the
# lab's postgresql_memory_mb, 1024).
LAB = Settings(100, "256MB", str(256 * 1024 * 1024), "3000", "30s", "7d")
CHANGED = Settings(110, "272MB", str(257 * 1024 * 1024), "3100", "31s", "8d")
OVERLAY = """\
etcd_heartbeat_interval: 110
postgresql_parameters_custom:
  shared_buffers: 272MB
redis_maxmemory: 257mb
redis_sentinel_down_after_ms: 3100
nginx_keepalive_timeout: 31s
prometheus_retention_time: 8d
"""


def seconds(duration: str) -> int:
    """A Prometheus duration ("7d", "1w2d", "90m") in seconds: Prometheus prints 7d as 1w."""
    units = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([ywdhms])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def unit_starts(lab: Lab, hosts: list[str], unit: str) -> dict[str, str]:
    """When each host's unit last started (a restart changes it)."""
    command = f"systemctl show -p ExecMainStartTimestampMonotonic --value {unit}"
    return {h: lab.ssh(h, command).stdout.strip() for h in hosts}


def patroni(lab: Lab) -> dict[str, dict[str, object]]:
    """GET /patroni of every database host, answered by the host's own Patroni."""
    return {h: patroni_status(lab, h) for h in lab.groups["postgres"]}


def shared_buffers(lab: Lab, host: str) -> str:
    show = "runuser -u postgres -- psql -XAtc 'SHOW shared_buffers'"
    return lab.ssh(host, show).stdout.strip()


def sentinels(lab: Lab, probe: str) -> dict[str, str]:
    """down-after-milliseconds as each Sentinel holds it."""
    hosts = lab.groups["redis_sentinel"]
    calls = [
        Call(lab.hosts[h].address, ("SENTINEL", "MASTER", MASTER), port=SENTINEL_PORT)
        for h in hosts
    ]
    replies = ask(lab, probe, *calls)
    return {h: pairs(r)[0]["down-after-milliseconds"] for h, r in zip(hosts, replies, strict=True)}


def nginx_processes(lab: Lab) -> dict[str, tuple[str, set[str]]]:
    """Each edge host's nginx master process and its workers."""
    out: dict[str, tuple[str, set[str]]] = {}
    for host in lab.groups["edge"]:
        master = lab.ssh(host, "cat /run/nginx.pid").stdout.strip()
        workers = lab.ssh(host, f"pgrep -P {shlex.quote(master)}", check=False).stdout.split()
        out[host] = (master, set(workers))
    return out


@dataclass
class State:
    etcd: dict[str, str]
    patroni: dict[str, dict[str, object]]
    redis: dict[str, tuple[str, str]]
    epoch: int
    sentinel_starts: dict[str, str]
    nginx: dict[str, tuple[str, set[str]]]
    prometheus: dict[str, str]


def state(lab: Lab, probe: str) -> State:
    return State(
        etcd=unit_starts(lab, lab.groups["etcd"], "etcd"),
        patroni=patroni(lab),
        redis=node_state(lab, probe),
        epoch=config_epoch(lab, probe),
        sentinel_starts=unit_starts(lab, lab.groups["redis_sentinel"], "redis-sentinel"),
        nginx=nginx_processes(lab),
        prometheus=unit_starts(lab, lab.groups["monitoring"], "prometheus"),
    )


def leader_of(members: dict[str, dict[str, object]]) -> str:
    leaders = [h for h, m in members.items() if m.get("role") == "primary"]
    assert len(leaders) == 1, f"not one primary: {members}"
    return leaders[0]


def change_every_tier(lab: Lab, probe: str, inventory: Path, want: Settings, label: str) -> str:
    """site.yml with the tiers' tags and `inventory`, under the order writer; every tier's
    member restarted or reloaded as its kind needs, with the values of `want`."""
    assert wait_for(lambda: whole(lab), 120, "the database tier to be whole before the change")
    wait_healthy(lab, probe, 60)
    before = state(lab, probe)
    old_leader = leader_of(before.patroni)
    with OrderWriter(limit_s=1500) as writer:
        time.sleep(3)
        started = time.monotonic()
        run = run_documented(
            "site.yml",
            "--tags etcd,postgresql,redis,nginx,prometheus",
            inventory=inventory,
            timeout=1500,
        )
        took = time.monotonic() - started
        log = REPO / ".cache" / f"rolling-changes-{label}.log"
        log.write_text(run.stdout + run.stderr)
        assert wait_for(lambda: whole(lab), 120, "the database tier whole after the change")
        pair = wait_healthy(lab, probe, 60)
        time.sleep(3)
    after = state(lab, probe)
    new_leader = leader_of(after.patroni)
    timelines = {int(str(m["timeline"])) for m in after.patroni.values()}
    failovers = after.epoch - before.epoch
    report = (
        f"site.yml {TAGS} ({want}): {took:.0f} s; PostgreSQL leader {old_leader} -> "
        f"{new_leader}, timeline {before.patroni[old_leader]['timeline']} -> {sorted(timelines)}; "
        f"{failovers} Redis failover(s), primary now {data_nodes(lab)[pair.primary]}; "
        f"{writer.summary()}; output in {log}"
    )
    print(report)
    assert run.returncode == 0, run.stdout[-4000:]

    # etcd: every member restarted, one at a time, with the value.
    order = re.findall(r"restart-member\.yml for \S+ => \(item=(\w+)\)", run.stdout)
    assert sorted(set(order)) == sorted(lab.groups["etcd"]), order
    for host in lab.groups["etcd"]:
        assert after.etcd[host] != before.etcd[host], f"etcd on {host} was not restarted"
        settings = lab.ssh(host, "cat /etc/default/etcd").stdout
        assert f'ETCD_HEARTBEAT_INTERVAL="{want.etcd_heartbeat_ms}"' in settings, settings

    # PostgreSQL: every member restarted, nothing pending, one planned switchover.
    for host, member in after.patroni.items():
        assert member.get("postmaster_start_time") != before.patroni[host].get(
            "postmaster_start_time"
        ), f"PostgreSQL on {host} was not restarted: {member}"
        assert not member.get("pending_restart"), f"{host} still waits for a restart: {member}"
        assert shared_buffers(lab, host) == want.shared_buffers, host
    assert new_leader != old_leader, "the primary restarted in place, without a switchover"
    assert timelines == {int(str(before.patroni[old_leader]["timeline"])) + 1}, report

    # Redis: every data node restarted with the value, at most one failover.
    for host, (run_id, maxmemory) in after.redis.items():
        assert run_id != before.redis[host][0], f"Redis on {host} was not restarted"
        assert maxmemory == want.redis_maxmemory_bytes, f"{host} runs maxmemory {maxmemory}"
    assert failovers <= 1, report

    # Sentinel: the value at run time, no restart.
    assert set(sentinels(lab, probe).values()) == {want.sentinel_down_after_ms}
    assert after.sentinel_starts == before.sentinel_starts, "a Sentinel was restarted"

    # nginx: reloaded (the same master, only new workers) with the value.
    for host, (master, workers) in after.nginx.items():
        old_master, old_workers = before.nginx[host]
        assert master == old_master, f"nginx on {host} was restarted, not reloaded"
        assert workers and not workers & old_workers, f"nginx on {host} was not reloaded"
        conf = lab.ssh(host, "cat /etc/nginx/nginx.conf").stdout
        assert f"keepalive_timeout {want.nginx_keepalive};" in conf, host

    # Prometheus: restarted with the flag.
    for host in lab.groups["monitoring"]:
        assert after.prometheus[host] != before.prometheus[host], f"{host}: not restarted"
    flags = get_json(f"{PROMETHEUS_URL}/api/v1/status/flags")["data"]
    retention = flags["storage.tsdb.retention.time"]
    assert seconds(retention) == seconds(want.prometheus_retention), retention

    assert writer.failed == 0, f"{report}: {writer.failures[:10]}"
    assert writer.served >= took / PACE_S * 0.5, report
    missing = writer.missing(lab)
    assert not missing, f"acknowledged orders missing: {missing}"
    assert writer.doubled(lab) == 0, "the API's retry of a lost order made a second order"
    wait_api_ready(60)
    return report


def test_a_changed_setting_in_every_tier_rolls_through_under_orders(
    lab: Lab,
    client: str,  # noqa: F811 - pytest fixture
) -> None:
    assert shared_buffers(lab, lab.groups["postgres"][0]) == LAB.shared_buffers, (
        "the lab does not run its own values: `make lab` converges it again"
    )
    changed = overlay_with("every-tier", OVERLAY)
    # From the first task on, the hosts may differ from the lab's inventory: the next
    # `make lab` must run site.yml, whatever happens here.
    CONVERGE_STAMP.unlink(missing_ok=True)
    report = change_every_tier(lab, client, changed, CHANGED, "changed")
    print(json.dumps({"changed": report}))
