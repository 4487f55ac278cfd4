"""`make bench-backup`: pgBackRest backup and restore time for a 1 GB database, and RPO.

Against the lab (`make lab` first), through the operator's playbooks:
1. loads BENCH_BACKUP_MB (1024) of incompressible rows (1 KB of random bytes each, the
   worst case for zst) into a database of its own, `bench_backup`, on the primary, and
   waits until the WAL archive has caught up;
2. times `backup.yml -e backup_type=full` to each repository (S3 on moto, Azure on
   azurite, GCS on gcp-storage-emulator, on mon1);
3. times `restore.yml -e restore_type=immediate` from each repository into a scratch
   directory on a replica (restore plus recovery: the RTO of that size), checks the row
   count of the copy, and removes it;
4. samples the RPO (age of the newest archived WAL, `archive_timeout` 60 s) once a second
   for BENCH_RPO_SECONDS (150) under a trickle of one write a second;
5. drops `bench_backup` and takes a new full backup to each repository, so that the next
   drill does not restore the bench's gigabyte (those times are printed too).

Prints one line per step and a summary table. Bounded: every step has a timeout; traffic
stays inside the lab network. Takes about 15-25 min on a 2-core machine.

  .venv/bin/python bench/backup.py [--repos s3,azure,gcs] [--mb 1024] [--rpo-seconds 150]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.rollout import ssh  # noqa: E402
from tests.e2e.conftest import _inventory, run_playbook  # noqa: E402

DB = "bench_backup"
AS_PG = "runuser -u postgres -- "


def hosts() -> dict[str, str]:
    """The postgres group's hosts and their addresses, from the inventory."""
    inv = _inventory()
    hostvars: dict[str, dict[str, object]] = inv["_meta"]["hostvars"]  # type: ignore[index]
    postgres: list[str] = inv["postgres"]["hosts"]  # type: ignore[index]
    return {h: str(hostvars[h]["ansible_host"]) for h in postgres}


def psql(address: str, sql: str, db: str = "postgres", timeout: int = 600) -> str:
    quoted = sql.replace("'", "'\\''")
    run = ssh(address, f"{AS_PG}psql -X -At -v ON_ERROR_STOP=1 -d {db} -c '{quoted}'", timeout)
    if run.returncode != 0:
        raise SystemExit(f"psql on {address} failed: {sql}\n{run.stdout}{run.stderr}")
    return run.stdout.strip()


def roles(addresses: dict[str, str]) -> tuple[str, str]:
    state = {h: psql(a, "SELECT pg_is_in_recovery()") for h, a in addresses.items()}
    primary = [h for h, s in state.items() if s == "f"]
    replicas = [h for h, s in state.items() if s == "t"]
    if len(primary) != 1 or not replicas:
        raise SystemExit(f"need one primary and a replica, found {state}")
    return primary[0], replicas[0]


def wait_archived(primary: str, limit: int = 1800) -> float:
    """Switch WAL and wait until that segment is archived; returns the seconds waited."""
    started = time.monotonic()
    segment = psql(primary, "SELECT pg_walfile_name(pg_switch_wal())")
    while psql(primary, f"SELECT last_archived_wal >= '{segment}' FROM pg_stat_archiver") != "t":
        if time.monotonic() - started > limit:
            raise SystemExit(f"WAL segment {segment} not archived within {limit} s")
        time.sleep(2)
    return time.monotonic() - started


def load(primary: str, mb: int) -> tuple[float, int, int]:
    psql(primary, f"DROP DATABASE IF EXISTS {DB}")
    psql(primary, f"CREATE DATABASE {DB}")
    psql(primary, "CREATE EXTENSION pgcrypto", DB)
    psql(primary, "CREATE TABLE blob (id bigint PRIMARY KEY, payload bytea NOT NULL)", DB)
    started = time.monotonic()
    batch = 100_000
    done = 0
    target = mb * 1024 * 1024
    while int(psql(primary, f"SELECT pg_database_size('{DB}')")) < target:
        psql(
            primary,
            f"INSERT INTO blob SELECT g, gen_random_bytes(1000) "
            f"FROM generate_series({done + 1}, {done + batch}) g",
            DB,
        )
        done += batch
    size = int(psql(primary, f"SELECT pg_database_size('{DB}')"))
    return time.monotonic() - started, size, done


def timed_playbook(name: str, *extra: str) -> tuple[float, str]:
    started = time.monotonic()
    run = run_playbook(name, *extra, timeout=3600)
    seconds = time.monotonic() - started
    if run.returncode != 0:
        raise SystemExit(f"{name} {' '.join(extra)} failed:\n{run.stdout[-3000:]}{run.stderr}")
    return seconds, run.stdout


def backup_seconds(primary: str, repo: str) -> float:
    """pgBackRest's own start-to-stop time of the newest backup in the repository."""
    out = ssh(primary, f"{AS_PG}pgbackrest --stanza=zapora --output=json info")
    info = json.loads(out.stdout)[0]
    key = {"s3": 1, "azure": 2, "gcs": 3}[repo]
    mine = [b for b in info["backup"] if b["database"]["repo-key"] == key]
    newest = mine[-1]
    return float(newest["timestamp"]["stop"] - newest["timestamp"]["start"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repos", default="s3,azure,gcs")
    parser.add_argument("--mb", type=int, default=1024)
    parser.add_argument("--rpo-seconds", type=int, default=150)
    args = parser.parse_args()
    repos = args.repos.split(",")
    addresses = hosts()
    primary_name, replica_name = roles(addresses)
    primary, replica = addresses[primary_name], addresses[replica_name]
    print(f"primary {primary_name}, restores on {replica_name}, repositories {repos}")

    load_s, size, rows = load(primary, args.mb)
    caught_up = wait_archived(primary)
    print(
        f"loaded {size / 2**20:.0f} MiB ({rows} rows of 1 KB random bytes) in {load_s:.1f} s; "
        f"WAL archive caught up {caught_up:.1f} s later"
    )
    results: dict[str, dict[str, float]] = {}
    for repo in repos:
        wall, _ = timed_playbook("backup.yml", f"backup_repo={repo}", "backup_type=full")
        results[repo] = {"backup_wall": wall, "backup_pgbackrest": backup_seconds(primary, repo)}
        print(
            f"backup full to {repo}: {wall:.1f} s (playbook), "
            f"{results[repo]['backup_pgbackrest']:.0f} s (pgBackRest's start to stop)"
        )
    scratch = "/var/lib/postgresql/restore-bench"
    for repo in repos:
        wall, out = timed_playbook(
            "restore.yml",
            f"restore_host={replica_name}",
            f"restore_repo={repo}",
            "restore_type=immediate",
            f"restore_dir={scratch}",
            "restore_port=5435",
        )
        found = re.search(r"Restored from \S+ .*? in ([0-9.]+) s", out, re.S)
        restore_s = float(found.group(1)) if found else float("nan")
        copy_rows = ssh(
            replica, f"{AS_PG}psql -X -At -p 5435 -d {DB} -c 'SELECT count(*) FROM blob'"
        ).stdout.strip()
        ssh(
            replica,
            f"{AS_PG}/usr/lib/postgresql/17/bin/pg_ctl -D {scratch} -m fast stop; rm -rf {scratch}",
        )
        results[repo].update(restore_wall=wall, restore=restore_s)
        print(
            f"restore from {repo}: {restore_s:.1f} s restore + recovery ({wall:.1f} s playbook); "
            f"the copy has {copy_rows} of {rows} rows"
        )
        if copy_rows != str(rows):
            print(f"FAILED: the copy from {repo} has {copy_rows} rows, not {rows}")
            return 1

    psql(primary, "CREATE TABLE IF NOT EXISTS rpo_trickle (at timestamptz DEFAULT now())", DB)
    ages: list[float] = []
    end = time.monotonic() + args.rpo_seconds
    while time.monotonic() < end:
        psql(primary, "INSERT INTO rpo_trickle DEFAULT VALUES", DB)
        age = psql(
            primary, "SELECT extract(epoch FROM now() - last_archived_time) FROM pg_stat_archiver"
        )
        ages.append(float(age))
        time.sleep(1)
    print(
        f"RPO over {args.rpo_seconds} s, one write a second: age of the newest archived WAL "
        f"median {statistics.median(ages):.1f} s, max {max(ages):.1f} s (archive_timeout 60 s)"
    )

    psql(primary, f"DROP DATABASE {DB}")
    wait_archived(primary)
    for repo in repos:
        wall, _ = timed_playbook("backup.yml", f"backup_repo={repo}", "backup_type=full")
        results[repo]["small_backup_wall"] = wall
    print()
    print(
        f"| repository | full backup of {size / 2**30:.2f} GiB | restore + recovery | "
        "full backup after the drop |"
    )
    print("|---|---|---|---|")
    for repo in repos:
        r = results[repo]
        print(
            f"| {repo} | {r['backup_pgbackrest']:.0f} s ({r['backup_wall']:.0f} s playbook) | "
            f"{r['restore']:.1f} s ({r['restore_wall']:.0f} s playbook) | "
            f"{r['small_backup_wall']:.0f} s playbook |"
        )
    print(f"RPO: median {statistics.median(ages):.1f} s, max {max(ages):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
