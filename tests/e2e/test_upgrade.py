"""playbooks/upgrade.yml on the lab, run as docs/operator-guide.md shows it.

- Refusal: with a Patroni replica stopped, the preflight's Patroni gate refuses, naming
  the replica, before any package or service is touched (every host changed=0, no member
  step ran). The replica is started again in a `finally` and the cluster waited for.
- The run under orders: while a customer posts orders through the edge, upgrade.yml
  passes its preflight (every tier's gate, the pins, a backup younger than 24 h), then
  walks the tiers in the documented order (etcd, PostgreSQL with the leader last, Redis
  with the primary last, the Sentinels, monitoring, the edge, node_exporter), one member
  at a time with the tier's gate after each: 0 failed orders, none acknowledged lost.
  Afterwards every pinned package on every host is installed at a version its pin
  (/etc/apt/preferences.d/zapora-*.pref) allows and is apt's candidate at priority 1001.

Debian 13 offers one version of each package here, so no package moves and no member
restarts: that path (a new version, then switchover/failover and restart per member) is
printed as NOT RUN. Cost on the lab: the refusal about 20-30 s plus the replica's return;
the run about 60-90 s (printed).
"""

from __future__ import annotations

import fnmatch
import re
import time

import pytest

from tests.e2e.conftest import Lab, run_documented
from tests.e2e.order_writer import OrderWriter
from tests.e2e.test_tier_playbooks import patroni_members, wait_for, whole
from tests.not_run import record

pytestmark = [pytest.mark.e2e, pytest.mark.lab(shared=("app",), exclusive=("data",))]

TIER_ORDER = ["etcd", "postgresql", "redis", "sentinel", "monitoring", "edge", "node_exporter"]


def folded(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def recap(stdout: str) -> dict[str, tuple[int, int]]:
    """PLAY RECAP: host -> (changed, failed)."""
    return {
        host: (int(changed), int(failed))
        for host, changed, failed in re.findall(
            r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", stdout, re.M
        )
    }


def roles(lab: Lab) -> tuple[str, list[str]]:
    state = {}
    for db in lab.groups["postgres"]:
        state = patroni_members(lab, db)
        if state:
            break
    leader = [n for n, m in state.items() if m["Role"] == "Leader"]
    assert len(leader) == 1, state
    return leader[0], [n for n in state if n != leader[0]]


def test_upgrade_refuses_while_a_patroni_replica_is_stopped(lab: Lab) -> None:
    wait_for(lambda: whole(lab), 120, "the database tier whole before the test")
    _, replicas = roles(lab)
    replica = replicas[0]
    started = time.monotonic()
    try:
        lab.ssh(replica, "systemctl stop patroni")
        run = run_documented("upgrade.yml", timeout=300)
        took = time.monotonic() - started
    finally:
        lab.ssh(replica, "systemctl start patroni")
    out = folded(run.stdout)
    assert run.returncode != 0, run.stdout[-4000:]
    said = re.search(r"UPGRADE GATE FAILED: Patroni is not whole.*?re-run\.", out)
    assert said, run.stdout[-4000:]
    print(
        f"upgrade.yml with Patroni stopped on {replica}: refused in {took:.1f} s: {said.group(0)}"
    )
    behind = re.search(r"missing or behind: ([^.]*)\.", said.group(0))
    assert behind and replica in behind.group(1).split(", "), said.group(0)
    assert "UPGRADE member" not in out, "a member step ran after a failed gate"
    assert all(changed == 0 for changed, _ in recap(run.stdout).values()), recap(run.stdout)
    wait_for(lambda: whole(lab), 180, f"Patroni on {replica} streaming again")


def pins_and_versions(lab: Lab, host: str) -> tuple[dict[str, str], dict[str, str], str]:
    """The host's pins (package -> version glob), installed versions, and apt-cache policy."""
    out = lab.ssh(
        host,
        "cat /etc/apt/preferences.d/zapora-*.pref; echo '==='; "
        "dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n'",
    ).stdout
    prefs, installed = out.split("===\n", 1)
    pins: dict[str, str] = {}
    for block in re.findall(r"^Package: (.+)\nPin: version (\S+)\n", prefs, re.M):
        for package in block[0].split():
            pins[package] = block[1]
    versions = {
        p: v
        for p, v, status in (line.split(" ", 2) for line in installed.splitlines())
        if status.startswith("ii")
    }
    policy = lab.ssh(
        host, "apt-cache policy " + " ".join(sorted(p for p in pins if p in versions))
    ).stdout
    return pins, versions, policy


def upgrade_under_orders(
    lab: Lab, limit_s: int, restart: str = ""
) -> tuple[str, str, str, OrderWriter]:
    """upgrade.yml as documented (with `-e upgrade_restart=RESTART` when given) while a
    customer posts orders, the database tier whole before it: the leader before, the
    run's folded output, a report line and the writer. The run must succeed."""
    wait_for(lambda: whole(lab), 120, "the database tier whole before the test")
    leader, _ = roles(lab)
    with OrderWriter(limit_s=limit_s) as writer:
        time.sleep(3)
        started = time.monotonic()
        run = (
            run_documented("upgrade.yml", timeout=limit_s + 200, upgrade_restart=restart)
            if restart
            else run_documented("upgrade.yml", timeout=limit_s + 200)
        )
        took = time.monotonic() - started
        time.sleep(3)
    shown = f" -e upgrade_restart={restart}" if restart else ""
    report = f"upgrade.yml{shown}: {took:.0f} s; {writer.summary()}"
    print(report)
    assert run.returncode == 0, run.stdout[-5000:]
    return leader, folded(run.stdout), report, writer


def test_upgrade_runs_its_gates_in_order_under_orders(lab: Lab) -> None:
    leader, out, report, writer = upgrade_under_orders(lab, 400)
    plan = re.search(r"UPGRADE PLAN \(restart changed\): (.*?)\"", out)
    assert plan, out[-4000:]
    print(plan.group(0))
    backup = re.search(r"UPGRADE backup: (.*?)\"", out)
    assert backup, out[-4000:]
    print(backup.group(0))

    steps = re.findall(r"UPGRADE member (\w+) (\S+): packages ([^,]+), (no restart|restart)", out)
    gates = re.findall(r"UPGRADE GATE (\w+) ok \(([^)]+)\)", out)
    tiers = [tier for tier, *_ in steps]
    assert tiers == sorted(tiers, key=TIER_ORDER.index), tiers
    assert set(tiers) == set(TIER_ORDER), tiers
    by_tier = {t: [host for tier, host, *_ in steps if tier == t] for t in TIER_ORDER}
    assert sorted(by_tier["etcd"]) == sorted(lab.groups["etcd"]), by_tier
    assert by_tier["postgresql"][-1] == leader, f"the leader {leader} is not last: {by_tier}"
    assert sorted(by_tier["postgresql"]) == sorted(lab.groups["postgres"]), by_tier
    assert sorted(by_tier["redis"]) == sorted(lab.groups["redis"]), by_tier
    # Every tier's gate before anything, after each member of a tier with a gate, and at the end.
    for gate in ("etcd", "patroni", "redis", "monitoring", "edge"):
        assert (gate, "preflight") in gates and (gate, "final") in gates, gates
    for tier, gate in (
        ("etcd", "etcd"),
        ("postgresql", "patroni"),
        ("redis", "redis"),
        ("edge", "edge"),
    ):
        for host in by_tier[tier]:
            assert (gate, f"after {host}") in gates, f"no {gate} gate after {host}: {gates}"

    assert writer.failed == 0, f"{report}: {writer.failures[:10]}"
    missing = writer.missing(lab)
    assert not missing, f"acknowledged orders missing: {missing}"

    checked = 0
    for host in lab.hosts:
        pins, versions, policy = pins_and_versions(lab, host)
        assert pins, f"{host}: no /etc/apt/preferences.d/zapora-*.pref"
        for package, glob in pins.items():
            if package not in versions:
                continue
            assert fnmatch.fnmatchcase(versions[package], glob), (
                f"{host}: {package} {versions[package]} not {glob}"
            )
            entry = re.search(
                rf"^{re.escape(package)}:\n(?:  .*\n)*?.*?\*\*\* (\S+) 1001$", policy, re.M
            )
            assert entry, (
                f"{host}: {package} installed version is not held at priority 1001:\n{policy}"
            )
            checked += 1
    print(
        f"pins honoured: {checked} installed packages on {len(lab.hosts)} hosts "
        "at their pinned line (priority 1001)"
    )

    moved = [s for s in steps if s[2] != "already on the pinned line"]
    if not moved:
        why = (
            "Debian 13 offers one version of each package here, so every member was already "
            "on its pinned line; a new version's install (apt under policy-rc.d 101) ran nowhere "
            "(the restart path it triggers runs in the slow test with upgrade_restart=always)"
        )
        print(f"NOT RUN: upgrade.yml moving a package to a new version: {why}")
        record("upgrade.yml moving a package to a new version", why)


@pytest.mark.slow
def test_upgrade_with_every_member_restarted_under_orders(lab: Lab) -> None:
    """`-e upgrade_restart=always`: the path a new version takes, without one. Every member
    restarts through its tier's machinery (one Patroni switchover, one Sentinel failover)
    while a customer posts orders: 0 acknowledged orders lost; failed requests printed and
    asserted 0."""
    leader, out, report, writer = upgrade_under_orders(lab, 900, restart="always")
    steps = re.findall(r"UPGRADE member (\w+) (\S+): packages ([^,]+), (no restart|restart)", out)
    assert steps and all(s[3] == "restart" for s in steps), steps
    assert "Switched over from " + leader in out, "no switchover before the leader's restart"
    assert roles(lab)[0] != leader, "the old leader leads again"
    missing = writer.missing(lab)
    assert not missing, f"acknowledged orders missing: {missing}"
    assert writer.failed == 0, f"{report}: {writer.failures[:10]}"
