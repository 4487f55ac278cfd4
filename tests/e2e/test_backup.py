"""Backups on the lab: pgBackRest on db1 + db2 to the three emulators on mon1.

The restore drill runs restore-drill.yml as an operator would: a restore point on the
primary, the latest backup plus WAL restored beside production on the replica, every
table compared; then the drill's metrics must be on that host as the alerts read them.
Bounded: one drill, one backup, a few SSH reads. Needs a full backup in each repository:
the test makes one with backup.yml first.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.e2e.conftest import Lab, run_playbook

pytestmark = pytest.mark.e2e

REPOS = ("s3", "azure", "gcs")
AS_PG = "runuser -u postgres -- "
IN_RECOVERY = AS_PG + "psql -X -At -c 'SELECT pg_is_in_recovery()'"
TEXTFILES = "/var/lib/prometheus/node-exporter"


def pgbackrest_info(lab: Lab, host: str) -> list[dict[str, Any]]:
    out = lab.ssh(host, AS_PG + "pgbackrest --stanza=zapora --output=json info").stdout
    result: list[dict[str, Any]] = json.loads(out)
    return result


def test_every_repository_is_reachable_and_encrypted(lab: Lab) -> None:
    info = pgbackrest_info(lab, lab.groups["postgres"][0])[0]
    assert info["cipher"] == "aes-256-cbc"
    repos = {r["key"]: r["cipher"] for r in info["repo"]}
    assert repos == {1: "aes-256-cbc", 2: "aes-256-cbc", 3: "aes-256-cbc"}, repos


def test_wal_is_archived(lab: Lab) -> None:
    host = lab.groups["postgres"][0]
    out = lab.ssh(
        host,
        "runuser -u postgres -- psql -X -At -c "
        "\"SELECT current_setting('archive_mode'), current_setting('archive_timeout')\"",
    ).stdout.strip()
    assert out == "on|1min", out


def test_backup_timers_are_scheduled_on_every_database_host(lab: Lab) -> None:
    timers = "zapora-pgbackrest-backup@full.timer zapora-pgbackrest-backup@diff.timer"
    for host in lab.groups["postgres"]:
        out = lab.ssh(
            host, f"systemctl is-enabled {timers} && systemctl is-active {timers}", check=False
        )
        assert out.returncode == 0, f"{host}: {out.stdout} {out.stderr}"


def test_a_backup_run_on_the_replica_is_skipped(lab: Lab) -> None:
    replicas = [h for h in lab.groups["postgres"] if lab.ssh(h, IN_RECOVERY).stdout.strip() == "t"]
    assert replicas, "no replica in the lab's postgres group"
    run = lab.ssh(replicas[0], "/usr/local/sbin/zapora-pgbackrest backup diff", check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"skipped the diff backup.*in recovery", run.stdout), run.stdout


# Slow (about 5-7 min on the lab: three full backups, one per repository, then the
# drill's restore and comparison): make test-e2e-full runs it.
@pytest.mark.slow
def test_restore_drill_matches_the_primary_and_exports_rto_rpo(lab: Lab) -> None:
    for repo in REPOS:
        backup = run_playbook("backup.yml", f"backup_repo={repo}", "backup_type=full")
        assert backup.returncode == 0, backup.stdout[-3000:]
    drill = run_playbook("restore-drill.yml")
    assert drill.returncode == 0, drill.stdout[-3000:]
    report = re.search(r"RESTORE DRILL PASSED .*?RPO [0-9.]+ s", drill.stdout, re.S)
    assert report, drill.stdout[-3000:]
    print(" ".join(report.group(0).split()))
    host = next(h for h in lab.groups["postgres"] if lab.ssh(h, IN_RECOVERY).stdout.strip() == "t")
    prom = lab.ssh(host, f"cat {TEXTFILES}/zapora_restore_drill.prom").stdout
    assert re.search(r'^zapora_restore_drill_last_success\{repo="s3"\} 1$', prom, re.M), prom
    for name in ("rto", "rpo"):
        assert re.search(
            rf'^zapora_restore_drill_{name}_seconds\{{repo="s3"\}} [0-9.]+$', prom, re.M
        ), prom
    backups = lab.ssh(host, f"cat {TEXTFILES}/zapora_backup.prom").stdout
    for repo in REPOS:
        full = rf'type="full",repo="{repo}"'
        assert re.search(
            rf"^zapora_backup_last_success_timestamp_seconds\{{{full}\}} [1-9][0-9]+",
            backups,
            re.M,
        ), backups
