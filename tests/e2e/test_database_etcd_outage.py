"""etcd under the database tier on the lab, while a customer posts orders through the edge:
Patroni's failsafe mode through a 60 s outage of etcd on every host, and a rolling
restart of etcd for a changed setting.

Without failsafe_mode the primary cannot refresh its leader key and demotes itself
retry_timeout (5 s) into the outage: every write fails until etcd is back. With it, the
primary asks every other Patroni member over the REST API (POST /failsafe) and, while
all of them answer, stays primary. The test asserts: no order failed, every acknowledged
order is in the database, the leader is the same host afterwards, and the lab is whole
again (etcd healthy with every member, a leader and a streaming sync standby) before the
data tier is handed back. Cost: the 60 s outage plus about 15-30 s of set-up and
recovery.

The rolling restart (slow: two database.yml runs, `make test-e2e-full`): a changed
`etcd_heartbeat_interval` in a group_vars file of an overlay of the lab's inventory (the
operator's edit) and database.yml as documented restart every member once, one at a
time, with no failed order and the Patroni leader where it was; the lab's own inventory
then puts the old value back the same way.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import INVENTORY, Lab, on_every, run_documented
from tests.e2e.order_writer import PACE_S, OrderWriter
from tests.e2e.test_redis_daytwo import overlay_with
from tests.e2e.test_tier_playbooks import PATRONICTL, patroni_members, wait_for, whole

pytestmark = [pytest.mark.e2e, pytest.mark.lab(shared=("app",), exclusive=("data",))]

OUTAGE_S = 60
RECOVERY_S = 120


def leader(lab: Lab) -> str:
    for db in lab.groups["postgres"]:
        state = patroni_members(lab, db)
        leaders = [name for name, m in state.items() if m["Role"] == "Leader"]
        if leaders:
            return leaders[0]
    raise AssertionError("no Patroni member names a leader")


def patroni_status(lab: Lab, host: str) -> dict[str, object]:
    """GET /patroni on the host's REST API, asked on the host itself (the firewall lets
    only the database hosts reach the port)."""
    url = f"https://{lab.hosts[host].address}:8008/patroni"
    # HTTPS, verified with the internal CA the host holds.
    ctx = "ssl.create_default_context(cafile='/etc/postgresql/pki/ca.crt')"
    # Patroni answers its REST API between HA loops; while etcd is gone a loop waits out
    # its etcd retries, so one GET may time out: three tries, and the last error is kept.
    error = ""
    for _ in range(3):
        out = lab.ssh(
            host,
            "python3 -c 'import ssl, sys, urllib.request; "
            f'sys.stdout.write(urllib.request.urlopen("{url}", timeout=8, context={ctx})'
            ".read().decode())'",
            check=False,
        )
        if out.returncode == 0:
            result: dict[str, object] = json.loads(out.stdout)
            return result
        error = (out.stderr or out.stdout).strip()[-500:]
        time.sleep(1)
    return {"error": error}


def test_orders_go_on_while_etcd_is_down_everywhere_for_60_s(lab: Lab) -> None:
    assert wait_for(lambda: whole(lab), 60, "the database tier to be whole before the outage")
    primary = leader(lab)
    config = yaml.safe_load(lab.ssh(primary, f"{PATRONICTL} show-config").stdout)
    assert config.get("failsafe_mode") is True, f"failsafe_mode is not on: {config}"
    etcd_hosts = lab.groups["etcd"]
    writer = OrderWriter(limit_s=OUTAGE_S + RECOVERY_S + 60)
    status: dict[str, object] = {}
    with writer:
        time.sleep(5)  # orders before the outage: the writer works at all
        on_every(lab, etcd_hosts, "systemctl stop etcd")
        stopped = time.monotonic()
        try:
            time.sleep(OUTAGE_S - 25)
            # Well into the outage (past retry_timeout and the leader key's ttl): the
            # primary still says primary, with failsafe active.
            status = patroni_status(lab, primary)
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
        finally:
            on_every(lab, etcd_hosts, "systemctl start etcd")
        down_s = time.monotonic() - stopped
        healed = time.monotonic()
        wait_for(lambda: whole(lab), RECOVERY_S, "etcd and Patroni whole after the outage")
        healed_s = time.monotonic() - healed
        time.sleep(5)  # orders after the recovery
    print(
        f"etcd down on {len(etcd_hosts)} hosts for {down_s:.0f} s: {writer.summary()}; "
        f"whole again {healed_s:.0f} s after the start; primary during the outage: "
        f"role={status.get('role')} failsafe_mode_is_active={status.get('failsafe_mode_is_active')}"
    )
    assert writer.failed == 0, f"{writer.summary()}: {writer.failures[:10]}"
    assert writer.served >= (OUTAGE_S / PACE_S) * 0.7, writer.summary()
    assert status.get("role") == "primary", f"the primary during the outage: {status}"
    assert leader(lab) == primary, "the leader moved during the etcd outage"
    missing = writer.missing(lab)
    assert not missing, f"acknowledged orders missing from the database: {missing}"


def etcd_starts(lab: Lab) -> dict[str, str]:
    """When each member's etcd process started (a restart changes it)."""
    return {
        h: lab.ssh(h, "systemctl show -p ExecMainStartTimestampMonotonic --value etcd").stdout
        for h in lab.groups["etcd"]
    }


def etcd_restart_under_orders(lab: Lab, inventory: Path, heartbeat_ms: int) -> str:
    primary = leader(lab)
    before = etcd_starts(lab)
    with OrderWriter(limit_s=900) as writer:
        time.sleep(3)
        started = time.monotonic()
        run = run_documented("database.yml", inventory=inventory, timeout=900)
        took = time.monotonic() - started
        wait_for(lambda: whole(lab), 60, "etcd and Patroni whole after database.yml")
    after = etcd_starts(lab)
    report = f"database.yml (heartbeat {heartbeat_ms} ms): {took:.0f} s; {writer.summary()}"
    print(report)
    assert run.returncode == 0, run.stdout[-4000:]
    order = re.findall(r"restart-member\.yml for \S+ => \(item=(\w+)\)", run.stdout)
    assert sorted(set(order)) == sorted(lab.groups["etcd"]), order
    for host in lab.groups["etcd"]:
        assert after[host] != before[host], f"etcd on {host} was not restarted"
        settings = lab.ssh(host, "cat /etc/default/etcd").stdout
        assert f'ETCD_HEARTBEAT_INTERVAL="{heartbeat_ms}"' in settings, settings
    assert writer.failed == 0, f"{report}: {writer.failures[:10]}"
    assert leader(lab) == primary, "the Patroni leader moved during etcd's rolling restart"
    assert not writer.missing(lab)
    return report


@pytest.mark.slow(reason="two database.yml runs with etcd's rolling restart (about 5 min)")
def test_a_changed_etcd_setting_restarts_one_member_at_a_time_under_orders(lab: Lab) -> None:
    assert wait_for(lambda: whole(lab), 60, "the database tier to be whole before the change")
    changed = overlay_with("etcd-heartbeat", "etcd_heartbeat_interval: 110")
    try:
        etcd_restart_under_orders(lab, changed, 110)
    finally:
        etcd_restart_under_orders(lab, INVENTORY, 100)
