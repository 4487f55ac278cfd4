"""The database tier's HA playbooks on the lab: switchover.yml and failover-drill.yml.

Switchover: hands over to the standby, a row written before is on the new primary, the
old primary streams from it; the same target again is no change; a host outside the
postgres group is refused, naming switchover_target. Failover drill: kills the primary's
container (the lab sets failover_drill_kill: docker) under a write load, and must report
a failover within the bound, no acknowledged write lost (synchronous mode) and the old
primary back as a streaming replica. Each test is bounded by its playbook timeouts
(about 1 and 3 minutes). Preflight: an even etcd member count stops database.yml before
it changes anything, naming the variable (run with --tags preflight only).
"""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import INVENTORY, REPO, Lab, run_documented, venv_tool
from tests.e2e.test_database import client, members, psql  # noqa: F401 - the client fixture

pytestmark = [pytest.mark.e2e, pytest.mark.lab(shared=("data",))]

# A functional bound, as in test_database.py: the speed is measured and printed (goal
# median 15 s, max 20 s: docs/postgresql.md), the lab shares 2 cores with CI.
FAILOVER_BOUND_S = 60.0


def leader(lab: Lab) -> str:
    return next(str(m["Member"]) for m in members(lab) if m["Role"] == "Leader")


@pytest.mark.lab(exclusive=("data",))  # the primary moves
def test_switchover_hands_over_keeps_rows_and_is_safe_to_rerun(
    lab: Lab,
    client: str,  # noqa: F811 - pytest fixture
) -> None:
    token = uuid.uuid4().hex
    old = leader(lab)
    lab.ssh(  # the probe table of test_database.py, made here too when this test runs alone
        old,
        "sudo -u postgres psql -X -d zapora -v ON_ERROR_STOP=1 -c "
        "'CREATE TABLE IF NOT EXISTS e2e_probe (id bigserial PRIMARY KEY, token text NOT NULL);"
        " ALTER TABLE e2e_probe OWNER TO zapora_owner;"
        " GRANT SELECT, INSERT ON e2e_probe TO zapora_app;"
        " GRANT USAGE ON SEQUENCE e2e_probe_id_seq TO zapora_app;'",
    )
    psql(lab, client, "read-write", f"INSERT INTO e2e_probe (token) VALUES ('{token}')")

    run = run_documented("switchover.yml", timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    said = re.search(r"Switched over from (\S+) to (\S+?):.*?answered after ([\d.]+) s", run.stdout)
    assert said, run.stdout[-3000:]
    print(f"switchover {said.group(1)} -> {said.group(2)}: Patroni answered in {said.group(3)} s")
    new = leader(lab)
    assert said.group(1) == old and new == said.group(2) != old, members(lab)
    assert any(m["Member"] == old and m["State"] == "streaming" for m in members(lab))
    kept = psql(
        lab, client, "read-write", f"SELECT count(*) FROM e2e_probe WHERE token='{token}'"
    ).stdout.strip()
    assert kept == "1", "the row acknowledged before the switchover is missing"

    again = run_documented("switchover.yml", switchover_target=new, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:]
    assert f"No change: {new} is already the leader" in again.stdout
    assert "changed=0" in again.stdout.split("PLAY RECAP")[-1]

    outsider = lab.groups["app"][0]
    refused = run_documented("switchover.yml", switchover_target=outsider, timeout=300)
    assert refused.returncode != 0
    assert f"switchover_target ({outsider})" in refused.stdout, refused.stdout[-3000:]
    assert leader(lab) == new


@pytest.mark.lab(exclusive=("data",))  # the primary is killed
def test_failover_drill_kills_the_primary_loses_no_acknowledged_write_and_heals(
    lab: Lab,
) -> None:
    old = leader(lab)
    # As the operator guide shows it: no options; the result is read from what the drill
    # prints and from the textfile metrics it publishes.
    run = run_documented("failover-drill.yml", timeout=600)
    out = run.stdout
    print("failover drill on the lab:", re.findall(r"writable\s+again\s+after\s+[\d.]+\s+s", out))
    assert run.returncode == 0, out[-4000:]
    # The messages may be folded across lines by the YAML output: whitespace between words.
    said = re.search(
        r"kill\s+of\s+the\s+primary\s+(\w+)\s+\((\w+)\s+mode.*?new\s+primary\s+(\w+)", out, re.S
    )
    assert said, out[-4000:]
    killed, mode, new_leader = said.groups()
    assert killed == old and new_leader != old, said.group(0)
    assert mode == "synchronous", said.group(0)
    writable = re.search(r"writable\s+again\s+after\s+([\d.]+)\s+s", out)
    assert writable, out[-4000:]
    assert float(writable.group(1)) <= FAILOVER_BOUND_S, writable.group(0)
    counts = re.search(r"acknowledged\s+writes\s+(\d+),\s+lost\s+(\d+)", out)
    assert counts, out[-4000:]
    assert int(counts.group(1)) > 0, counts.group(0)
    assert counts.group(2) == "0", f"acknowledged writes lost: {counts.group(0)}"
    state = members(lab)
    assert any(m["Member"] == old and m["State"] == "streaming" for m in state), state
    assert sorted(str(m["Role"]) for m in state) == ["Leader", "Sync Standby"], state
    # node_exporter's textfile collector on the monitoring host carries the result.
    prom = lab.ssh(
        lab.groups["monitoring"][0],
        "cat /var/lib/prometheus/node-exporter/zapora_failover_drill_sync.prom",
    ).stdout
    assert 'zapora_failover_drill_lost_writes{mode="sync"} 0' in prom, prom
    assert 'zapora_failover_drill_writable_seconds{mode="sync"}' in prom, prom


def test_an_even_etcd_member_count_is_refused_naming_the_variable(lab: Lab, tmp_path: Path) -> None:
    app = lab.groups["app"][0]
    even = tmp_path / "even-etcd.yml"
    even.write_text(f"all:\n  children:\n    etcd:\n      hosts:\n        {app}:\n")
    members_now = len(lab.groups["etcd"]) + 1
    assert members_now % 2 == 0, "the lab's etcd group is expected to be odd"
    run = subprocess.run(
        [
            venv_tool("ansible-playbook"),
            *("-i", str(INVENTORY), "-i", str(even)),
            str(REPO / "playbooks" / "database.yml"),
            *("--tags", "preflight"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    assert run.returncode != 0, run.stdout[-3000:]
    assert "etcd_group (etcd)" in run.stdout, run.stdout[-3000:]
    assert f"it has {members_now}" in run.stdout, run.stdout[-3000:]
