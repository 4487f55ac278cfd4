"""The tier playbooks the docs tell operators to run, run as documented on the lab.

On the converged lab, `bootstrap.yml` (and its `--check`), `database.yml` and
`site.yml --tags redis` succeed and change nothing on any host they run on (PLAY RECAP).
Then the documented removal of a database member and its return: the current Patroni
replica is taken out of the `postgres` and `etcd` groups (an overlay of the lab's
inventory, the operator's "take it out of the inventory"), `database-member-remove.yml`
removes it from Patroni and etcd while the primary keeps accepting writes, and
`database.yml` with the whole inventory brings it back as the streaming sync standby
with a row written before the removal, etcd again three healthy members. A `finally`
re-runs database.yml when the lab is not whole after the test.
"""

from __future__ import annotations

import functools
import json
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import INVENTORY, REPO, Lab, run_documented
from tests.e2e.faults import ETCDCTL, PATRONICTL
from tests.e2e.test_database import client, psql  # noqa: F401 - the client fixture
from tests.e2e.test_site_idempotent import assert_nothing_changed

pytestmark = pytest.mark.e2e


def timed(
    what: str, run: Callable[[], subprocess.CompletedProcess[str]]
) -> subprocess.CompletedProcess[str]:
    """Run a playbook and print how long it took on the lab (the docs' and CI's budget)."""
    start = time.monotonic()
    result = run()
    print(f"{what}: {time.monotonic() - start:.0f} s, rc {result.returncode}")
    return result


def hosts_of(lab: Lab, *groups: str) -> set[str]:
    return {h for g in groups for h in lab.groups.get(g, [])}


# Re-runs of a converge on the converged lab: nothing may change, but they take the
# whole lab for minutes (the firewall and Docker roles, Patroni's and Redis' checks),
# so no other test runs beside them.
@pytest.mark.slow(reason="bootstrap.yml on every host (about 1.8 min on the lab)")
@pytest.mark.lab(exclusive=("app", "data"))
def test_bootstrap_on_the_converged_lab_changes_nothing(lab: Lab) -> None:
    result = timed("bootstrap.yml", lambda: run_documented("bootstrap.yml"))
    assert_nothing_changed(lab, result)


@pytest.mark.slow(reason="bootstrap.yml --check on every host (about 1.5 min on the lab)")
@pytest.mark.lab(exclusive=("app", "data"))
def test_bootstrap_check_mode_on_the_converged_lab_reports_no_change(lab: Lab) -> None:
    result = timed("bootstrap.yml --check", lambda: run_documented("bootstrap.yml", "--check"))
    assert_nothing_changed(lab, result)


@pytest.mark.slow(reason="database.yml on the database tier (about 1.2 min on the lab)")
@pytest.mark.lab(exclusive=("app", "data"))
def test_database_on_the_converged_lab_changes_nothing(lab: Lab) -> None:
    result = timed("database.yml", lambda: run_documented("database.yml"))
    # Its plays: facts of the hosts pg_hba admits, the tier itself, the lab's emulators.
    hosts = hosts_of(lab, "postgres", "etcd", "app", "monitoring", "object_store")
    assert_nothing_changed(lab, result, hosts)


# About 35 s on the lab: in `make test`.
@pytest.mark.lab(exclusive=("app", "data"))
def test_site_redis_tag_on_the_converged_lab_changes_nothing(lab: Lab) -> None:
    result = timed("site.yml --tags redis", lambda: run_documented("site.yml", "--tags redis"))
    assert_nothing_changed(lab, result)
    # The tag ran the redis role, not only the facts of every play.
    assert "redis : " in result.stdout, result.stdout[-3000:]


# --- removing a database member and adding it back (docs/operator-guide.md) ----------


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(2)


def patroni_members(lab: Lab, on: str) -> dict[str, dict[str, object]]:
    """Patroni's cluster as `patronictl list` on `on` shows it (it reads etcd), by name;
    empty when that host cannot answer."""
    out = lab.ssh(on, f"{PATRONICTL} list -f json", check=False, timeout=30)
    if out.returncode != 0:
        return {}
    return {str(m["Member"]): m for m in json.loads(out.stdout)}


def etcd_members(lab: Lab, on: str) -> dict[str, str]:
    """etcd's member list, asked on `on`: name -> member ID (hex, as etcdctl takes it)."""
    out = lab.ssh(on, f"{ETCDCTL} member list -w json", check=False, timeout=30)
    if out.returncode != 0:
        return {}
    return {str(m.get("name", "")): f"{m['ID']:x}" for m in json.loads(out.stdout)["members"]}


def etcd_healthy(lab: Lab, on: str) -> list[str]:
    """The endpoints of the whole cluster that answer healthy, asked on `on`."""
    out = lab.ssh(on, f"{ETCDCTL} endpoint health --cluster -w json", check=False, timeout=30)
    try:
        health = json.loads(out.stdout)
    except json.JSONDecodeError:
        return []
    return sorted(str(e["endpoint"]) for e in health if e.get("health"))


def whole(lab: Lab) -> bool:
    """Every postgres host in Patroni (a leader, the rest streaming), every etcd host a
    healthy member: the lab as the other tests expect it."""
    for db in lab.groups["postgres"]:
        state = patroni_members(lab, db)
        if state:
            break
    etcd_host = lab.groups["etcd"][0]
    return (
        set(state) == set(lab.groups["postgres"])
        and sorted(str(m["Role"]) for m in state.values()) == ["Leader", "Sync Standby"]
        and all(m["State"] in ("running", "streaming") for m in state.values())
        and set(etcd_members(lab, etcd_host)) == set(lab.groups["etcd"])
        and len(etcd_healthy(lab, etcd_host)) == len(lab.groups["etcd"])
    )


def inventory_without(
    host: str | Mapping[str, Sequence[str]],
    groups: Sequence[str] = ("postgres", "etcd"),
    kept_in: str = "database_removed",
    base: Path = INVENTORY,
) -> Path:
    """The lab's inventory (or the overlay `base`) with `host` out of `groups`, kept in a
    group of its own (`kept_in`: reachable, the removal playbook stops it). `host` may
    instead map several hosts to the groups each leaves (a replica leaving `redis`, mon1
    `redis_sentinel`). Two levels under the repository like inventory/lab, whose
    group_vars it links: they find the lab's key and secrets relative to the inventory's
    directory."""
    leaving = {host: groups} if isinstance(host, str) else dict(host)
    data = yaml.safe_load((base / "hosts.yml").read_text())
    children = data["all"]["children"]
    for name, left in leaving.items():
        for group in left:
            del children[group]["hosts"][name]
    children[kept_in] = {"hosts": dict.fromkeys(leaving)}
    return write_overlay(f"inventory-without-{'-'.join(sorted(leaving))}", data)


def write_overlay(name: str, hosts: dict[str, object]) -> Path:
    """.cache/<name>: an inventory whose hosts.yml is `hosts`, beside a link to the lab's
    group_vars (replacing what was there)."""
    overlay = REPO / ".cache" / name
    shutil.rmtree(overlay, ignore_errors=True)
    overlay.mkdir(parents=True)
    (overlay / "hosts.yml").write_text(yaml.safe_dump(hosts))
    (overlay / "group_vars").symlink_to(INVENTORY / "group_vars")
    return overlay


def heal(lab: Lab) -> None:
    """Leave the lab whole for the other tests, also when an assertion failed half-way:
    database.yml with the whole inventory adds back what is missing."""
    if whole(lab):
        return
    healed = timed("database.yml (repair)", lambda: run_documented("database.yml"))
    wait_for(
        lambda: whole(lab),
        120,
        "the database tier to be whole after re-running database.yml "
        f"(rc {healed.returncode}: {healed.stdout[-2000:]})",
    )


def psql_on(lab: Lab, app: str, host: str, sql: str) -> str:
    """A query as the API's user over TLS on one database host (a standby reads)."""
    dsn = (
        f"host={lab.hosts[host].address} port=5432 dbname=zapora user=zapora_app "
        "sslmode=verify-full sslrootcert=/etc/zapora-e2e/ca.crt connect_timeout=2"
    )
    cmd = f"psql -X -At -v ON_ERROR_STOP=1 {shlex.quote(dsn)} -c {shlex.quote(sql)}"
    return lab.ssh(app, cmd, check=False, timeout=30).stdout.strip()


def standby_has_row(lab: Lab, app: str, host: str, token: str) -> bool:
    query = f"SELECT pg_is_in_recovery(), count(*) FROM e2e_probe WHERE token = '{token}'"
    return psql_on(lab, app, host, query) == "t|1"


@pytest.mark.slow(reason="database-member-remove.yml, then database.yml (about 2 min on the lab)")
# The replica goes away and comes back: the primary's commits wait for a sync standby
# until Patroni drops it, and database.yml runs on the whole tier.
@pytest.mark.lab(exclusive=("app", "data"))
def test_a_removed_replica_leaves_patroni_and_etcd_and_database_yml_adds_it_back(
    lab: Lab,
    client: str,  # noqa: F811 - pytest fixture
) -> None:
    state = patroni_members(lab, lab.groups["postgres"][0])
    leader = next(name for name, m in state.items() if m["Role"] == "Leader")
    replica = next(name for name, m in state.items() if m["Role"] == "Sync Standby")
    assert state[replica]["State"] == "streaming", state
    before_ids = etcd_members(lab, leader)
    assert set(before_ids) == set(lab.groups["etcd"]), before_ids
    # The probe table of test_database.py, made here too when this test runs alone.
    lab.ssh(
        leader,
        "sudo -u postgres psql -X -d zapora -v ON_ERROR_STOP=1 -c "
        "'CREATE TABLE IF NOT EXISTS e2e_probe (id bigserial PRIMARY KEY, token text NOT NULL);"
        " ALTER TABLE e2e_probe OWNER TO zapora_owner;"
        " GRANT SELECT, INSERT ON e2e_probe TO zapora_app;"
        " GRANT USAGE ON SEQUENCE e2e_probe_id_seq TO zapora_app;'",
    )
    before, during = uuid.uuid4().hex, uuid.uuid4().hex
    psql(lab, client, "read-write", f"INSERT INTO e2e_probe (token) VALUES ('{before}')")

    overlay = inventory_without(replica)
    try:
        removed = timed(
            "database-member-remove.yml",
            lambda: run_documented(
                "database-member-remove.yml",
                inventory=overlay,
                timeout=300,
                database_remove_members=[replica],
            ),
        )
        assert removed.returncode == 0, removed.stdout[-4000:] + removed.stderr[-2000:]
        # Patroni: the replica's member key is gone (a stopped Patroni deletes it; at worst
        # it expires after the TTL).
        wait_for(
            lambda: (s := patroni_members(lab, leader)) and replica not in s,
            60,
            f"{replica} to leave Patroni's cluster; the playbook said:\n{removed.stdout[-2500:]}",
        )
        assert patroni_members(lab, leader)[leader]["Role"] == "Leader"
        assert lab.ssh(replica, "systemctl is-active patroni", check=False).stdout.strip() != (
            "active"
        )
        # etcd: the member is removed from the running cluster, the rest are healthy.
        left = etcd_members(lab, leader)
        assert replica not in left and set(left) == set(lab.groups["etcd"]) - {replica}, left
        assert len(etcd_healthy(lab, leader)) == len(left), etcd_healthy(lab, leader)
        # The primary alone still commits: Patroni no longer waits for the gone standby.
        wrote = psql(
            lab, client, "read-write", f"INSERT INTO e2e_probe (token) VALUES ('{during}')"
        )
        assert "synchronous replication" not in wrote.stderr, wrote.stderr

        added = timed("database.yml (adds it back)", lambda: run_documented("database.yml"))
        assert added.returncode == 0, added.stdout[-4000:] + added.stderr[-2000:]
        wait_for(
            lambda: (
                (s := patroni_members(lab, leader)).get(replica, {}).get("Role") == "Sync Standby"
                and s[replica]["State"] == "streaming"
            ),
            120,
            f"{replica} to stream again as the sync standby",
        )
        after_ids = etcd_members(lab, leader)
        assert set(after_ids) == set(lab.groups["etcd"]), after_ids
        # A new member (`member add`), not the old one still listed.
        assert after_ids[replica] != before_ids[replica], (before_ids, after_ids)
        wait_for(
            lambda: len(etcd_healthy(lab, leader)) == len(lab.groups["etcd"]),
            60,
            "etcd's members to report healthy",
        )
        for token in (before, during):
            wait_for(
                functools.partial(standby_has_row, lab, client, replica, token),
                30,
                f"row {token} on {replica}",
            )
    finally:
        shutil.rmtree(overlay, ignore_errors=True)
        heal(lab)


# Were the refusal gone, the leader's etcd member would be removed: the data tier is
# this test's alone (its finally repairs). About 10 s, in `make test`.
@pytest.mark.lab(exclusive=("data",))
def test_removing_the_patroni_leader_is_refused_naming_the_variable(lab: Lab) -> None:
    state = patroni_members(lab, lab.groups["postgres"][0])
    leader = next(name for name, m in state.items() if m["Role"] == "Leader")
    etcd_before = etcd_members(lab, leader)
    # Also in the lab's shape, one postgres host left in the group (the playbook once
    # asked Patroni only when two were left, and then checked nothing).
    overlay = inventory_without(leader)
    try:
        run = timed(
            "database-member-remove.yml (the leader)",
            lambda: run_documented(
                "database-member-remove.yml",
                inventory=overlay,
                timeout=300,
                database_remove_members=[leader],
            ),
        )
        assert run.returncode != 0, run.stdout[-3000:]
        said = f"database_remove_members names the Patroni leader ({leader})"
        assert said in run.stdout, run.stdout[-3000:]
        # Refused before any change: the leader leads, etcd keeps every member.
        assert patroni_members(lab, leader)[leader]["Role"] == "Leader"
        assert etcd_members(lab, leader) == etcd_before
        assert len(etcd_healthy(lab, leader)) == len(lab.groups["etcd"])
    finally:
        shutil.rmtree(overlay, ignore_errors=True)
        heal(lab)
