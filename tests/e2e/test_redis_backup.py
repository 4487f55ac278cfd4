"""Redis backups on the lab: an RDB snapshot from the primary to the S3 emulator on mon1.

Run as the hourly timer runs it, on every data node: the primary uploads, a replica says
why it skipped. The object is then listed, fetched back and checked by redis-check-rdb.
Bounded: one snapshot, one download.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import Lab

pytestmark = [pytest.mark.e2e, pytest.mark.lab(shared=("data",))]

BACKUP = "/usr/local/sbin/zapora-redis-backup"


def test_the_primary_uploads_a_snapshot_that_reads_back(lab: Lab) -> None:
    nodes = lab.groups["redis"]
    assert len(nodes) >= 2, nodes
    for host in nodes:
        timer = lab.ssh(host, "systemctl is-active zapora-redis-backup.timer", check=False)
        assert timer.stdout.strip() == "active", f"{host}: {timer.stdout} {timer.stderr}"
    runs = {
        host: json.loads(lab.ssh(host, f"{BACKUP} backup", timeout=300).stdout.splitlines()[-1])
        for host in nodes
    }
    uploaded = {h: r for h, r in runs.items() if r["backup"] == "uploaded"}
    assert len(uploaded) == 1, runs
    ((primary, result),) = uploaded.items()
    for host, run in runs.items():
        if host != primary:
            assert run["backup"] == "skipped" and "not the primary" in run["reason"], run
    assert result["bytes"] > 0, result

    listing = lab.ssh(primary, f"{BACKUP} list").stdout
    assert result["key"] in listing, listing
    copy = "/var/lib/redis/e2e-fetched.rdb"
    try:
        fetched = lab.ssh(primary, f"{BACKUP} fetch {result['key']} {copy}").stdout
        assert json.loads(fetched.splitlines()[-1])["fetched"] == result["key"], fetched
        check = lab.ssh(primary, f"redis-check-rdb {copy}", check=False)
        assert check.returncode == 0 and "RDB looks OK" in check.stdout, check.stdout + check.stderr
    finally:
        lab.ssh(primary, f"rm -f {copy}", check=False)
    print(
        f"redis backup: {result['bytes']} bytes from {primary} to s3://{result['bucket']}/{result['key']}"
    )
