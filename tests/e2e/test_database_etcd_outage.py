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

etcd's rolling restart for a changed setting runs with every other tier's in
test_rolling_changes.py.
"""

from __future__ import annotations

import json
import shlex
import time

import pytest
import yaml

from tests.e2e.conftest import Lab, on_every
from tests.e2e.order_writer import PACE_S, OrderWriter
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
    code = (
        "import ssl, sys, urllib.request; "
        "ctx = ssl.create_default_context(cafile='/etc/postgresql/pki/ca.crt'); "
        f"sys.stdout.write(urllib.request.urlopen('{url}', timeout=8, context=ctx).read().decode())"
    )
    # Patroni answers its REST API between HA loops; while etcd is gone a loop waits out
    # its etcd retries, so one GET may time out: three tries, and the last error is kept.
    error = ""
    for _ in range(3):
        out = lab.ssh(host, f"python3 -c {shlex.quote(code)}", check=False)
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
