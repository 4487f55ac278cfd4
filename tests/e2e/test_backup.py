"""Backups on the lab: pgBackRest on db1 + db2 to the three emulators on mon1.

Runs backup.yml, restore.yml and restore-drill.yml as an operator would, from the S3
repository: a full backup, a point-in-time restore to a named restore point beside
production (a row from before the point is there, a row from after it is not), then the
drill (every table compared with the primary, RTO/RPO exported for the alerts). Then the
same backup and drill for Azure and GCS; every object in the three stores is read back
on mon1 (each starts with the cipher's header); and none of the restored copies put WAL
into the archive. Bounded: one backup per repository, one restore, one drill each, a few
SSH reads. The single-host layout (no Patroni) with compression off, where the bytes can
show that no row is in plaintext, is the pgbackrest role's molecule scenario.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import pytest

from tests.e2e.conftest import Lab, run_documented
from tests.not_run import record

pytestmark = [pytest.mark.e2e, pytest.mark.lab(shared=("data",))]

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


# Each repository's schedule (the role's defaults; the lab sets none): timer instance ->
# OnCalendar, and per repository the largest age BackupTooOld allows per backup type.
TIMERS = {
    "s3-full": "*-*-* 01:15:00",
    "s3-diff": "*-*-* *:45:00",
    "azure-full": "Sun *-*-* 02:15:00",
    "azure-diff": "Mon..Sat *-*-* 02:15:00",
    "gcs-full": "*-*-01 03:15:00",
}
MAX_AGE = {
    "s3": {"full": 93600, "diff": 7200},
    "azure": {"full": 612000, "diff": 93600},
    "gcs": {"full": 2685600},
}


def test_backup_timers_are_scheduled_on_every_database_host(lab: Lab) -> None:
    """One timer per repository and type, and no other (the @full/@diff pair of older
    releases backed up to every repository)."""
    units = " ".join(f"zapora-pgbackrest-backup@{t}.timer" for t in TIMERS)
    for host in lab.groups["postgres"]:
        out = lab.ssh(
            host, f"systemctl is-enabled {units} && systemctl is-active {units}", check=False
        )
        assert out.returncode == 0, f"{host}: {out.stdout} {out.stderr}"
        listed = lab.ssh(
            host, "grep -H '^OnCalendar=' /etc/systemd/system/zapora-pgbackrest-backup@*.timer"
        ).stdout
        calendars = dict(re.findall(r"backup@([a-z0-9]+-[a-z]+)\.timer:OnCalendar=(.+)", listed))
        assert calendars == TIMERS, f"{host}: {listed}"


def test_backup_metrics_carry_each_repositorys_allowed_age(lab: Lab) -> None:
    """BackupTooOld compares each repository's last backup with these ages; a repository
    without differentials (GCS) has no diff series."""
    for host in lab.groups["postgres"]:
        prom = lab.ssh(host, f"cat {TEXTFILES}/zapora_backup.prom").stdout
        ages = re.findall(
            r'^zapora_backup_max_age_seconds\{type="(\w+)",repo="(\w+)"\} (\d+)$', prom, re.M
        )
        found: dict[str, dict[str, int]] = {}
        for kind, repo, age in ages:
            found.setdefault(repo, {})[kind] = int(age)
        assert found == MAX_AGE, f"{host}:\n{prom}"


def test_a_backup_run_on_the_replica_is_skipped(lab: Lab) -> None:
    replicas = [h for h in lab.groups["postgres"] if lab.ssh(h, IN_RECOVERY).stdout.strip() == "t"]
    assert replicas, "no replica in the lab's postgres group"
    before = len(pgbackrest_info(lab, replicas[0])[0]["backup"])
    run = lab.ssh(replicas[0], "/usr/local/sbin/zapora-pgbackrest backup diff", check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"skipped the diff backup.*in recovery", run.stdout), run.stdout
    # Skipped, not merely said so: no repository holds a new backup.
    assert len(pgbackrest_info(lab, replicas[0])[0]["backup"]) == before


def primary_and_replica(lab: Lab) -> tuple[str, str]:
    roles = {h: lab.ssh(h, IN_RECOVERY).stdout.strip() for h in lab.groups["postgres"]}
    primaries = [h for h, r in roles.items() if r == "f"]
    replicas = [h for h, r in roles.items() if r == "t"]
    assert len(primaries) == 1 and replicas, roles
    return primaries[0], replicas[0]


def backup_count(lab: Lab, host: str, repo_key: int) -> int:
    info = pgbackrest_info(lab, host)[0]
    return sum(1 for b in info["backup"] if b["database"]["repo-key"] == repo_key)


def psql(lab: Lab, host: str, sql: str, port: int = 5432) -> str:
    """One statement as postgres on a lab host (database postgres), its output trimmed."""
    quoted = sql.replace("'", "'\\''")
    return lab.ssh(
        host, f"{AS_PG}psql -X -At -v ON_ERROR_STOP=1 -p {port} -c '{quoted}'"
    ).stdout.strip()


def test_backup_then_point_in_time_restore_then_drill(lab: Lab) -> None:
    """backup.yml, restore.yml and restore-drill.yml as an operator runs them, from S3.

    A row written before a named restore point comes back on the restored copy; the row
    written after it does not. The drill then compares every table and exports RTO/RPO.
    """
    primary, replica = primary_and_replica(lab)
    before = backup_count(lab, primary, 1)
    started = int(time.time())
    backup = run_documented("backup.yml", backup_repo="s3", backup_type="full")
    assert backup.returncode == 0, backup.stdout[-3000:]
    assert backup_count(lab, primary, 1) == before + 1, "backup.yml made no new backup in s3"
    assert_last_full_backup(lab, primary, "s3", started)

    token = uuid.uuid4().hex[:12]
    point = f"e2e-{token}"
    psql(lab, primary, "CREATE TABLE IF NOT EXISTS e2e_pitr (v text PRIMARY KEY)")
    psql(lab, primary, f"INSERT INTO e2e_pitr VALUES ('before-{token}')")
    psql(lab, primary, f"SELECT pg_create_restore_point('{point}')")
    psql(lab, primary, f"INSERT INTO e2e_pitr VALUES ('after-{token}')")
    segment = psql(lab, primary, "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + 120
    while (
        psql(lab, primary, f"SELECT last_archived_wal >= '{segment}' FROM pg_stat_archiver") != "t"
    ):
        assert time.monotonic() < deadline, f"WAL segment {segment} not archived within 120 s"
        time.sleep(2)

    # As the operator guide shows it: the copy goes where restore.yml puts it by default.
    scratch, port = "/var/lib/postgresql/restore", 5433
    restore = run_documented(
        "restore.yml",
        restore_host=replica,
        restore_repo="s3",
        restore_type="name",
        restore_target=point,
    )
    try:
        assert restore.returncode == 0, restore.stdout[-3000:]
        rows = psql(
            lab, replica, f"SELECT v FROM e2e_pitr WHERE v LIKE '%{token}' ORDER BY v", port
        )
        assert rows.split() == [f"before-{token}"], rows
        assert psql(lab, replica, "SELECT pg_is_in_recovery()", port) == "f"
        timing = re.search(r"Restored from s3 .*? in ([0-9.]+) s", restore.stdout, re.S)
        assert timing, restore.stdout[-3000:]
        print(f"restore.yml to restore point {point}: {timing.group(1)} s")
    finally:
        lab.ssh(
            replica,
            f"{AS_PG}/usr/lib/postgresql/17/bin/pg_ctl -D {scratch} -m fast stop; rm -rf {scratch}",
            check=False,
        )
    # The production replica still streams, untouched by the copy beside it.
    assert lab.ssh(replica, IN_RECOVERY).stdout.strip() == "t"
    assert psql(lab, replica, f"SELECT count(*) FROM e2e_pitr WHERE v LIKE '%{token}'") == "2"

    started = int(time.time())
    drill = run_documented("restore-drill.yml")  # the default repository, s3
    assert drill.returncode == 0, drill.stdout[-3000:]
    assert_drill_report(lab, drill.stdout, "s3", started)
    # The drill's copy is stopped, not left running without its directory (it once was:
    # pg_ctl refused to stop it as root, and the next drill could not start).
    for host in lab.groups["postgres"]:
        left = lab.ssh(host, "pgrep -f 'postgres -D /var/lib/postgresql/restore'", check=False)
        assert left.returncode == 1, f"{host}: a restored copy still runs: {left.stdout}"


def prom_value(prom: str, metric: str) -> float:
    """The value of one series (name and labels as written) in a textfile's text."""
    found = re.search(rf"^{re.escape(metric)} (\S+)$", prom, re.M)
    assert found, f"{metric} missing:\n{prom}"
    return float(found.group(1))


def assert_last_full_backup(lab: Lab, host: str, repo: str, since: int) -> None:
    """The host's backup metrics date repo's newest full backup after `since` (this run's)."""
    prom = lab.ssh(host, f"cat {TEXTFILES}/zapora_backup.prom").stdout
    metric = f'zapora_backup_last_success_timestamp_seconds{{type="full",repo="{repo}"}}'
    assert prom_value(prom, metric) >= since, f"{metric} is older than this backup:\n{prom}"


def assert_drill_report(lab: Lab, output: str, repo: str, since: int) -> None:
    report = re.search(r"RESTORE DRILL PASSED .*?RPO [0-9.]+ s", output, re.S)
    assert report, output[-3000:]
    print(" ".join(report.group(0).split()))
    _, host = primary_and_replica(lab)
    prom = lab.ssh(host, f"cat {TEXTFILES}/zapora_restore_drill.prom").stdout
    assert re.search(rf'^zapora_restore_drill_last_success\{{repo="{repo}"\}} 1$', prom, re.M), prom
    for name in ("rto", "rpo"):
        assert re.search(
            rf'^zapora_restore_drill_{name}_seconds\{{repo="{repo}"\}} [0-9.]+$', prom, re.M
        ), prom
    # RestoreDrillTooOld reads these two: this drill's start, and the age it may reach.
    labels = f'{{repo="{repo}"}}'
    assert prom_value(prom, f"zapora_restore_drill_last_run_timestamp_seconds{labels}") >= since
    assert prom_value(prom, f"zapora_restore_drill_max_age_seconds{labels}") == 691200


# In CI's set: a full backup to Azure and to GCS and a drill from each, back to back, took
# 62 s on the lab at load 3 (195 s at load 10, beside a molecule run).
def test_backup_and_drill_from_azure_and_gcs(lab: Lab) -> None:
    primary, _ = primary_and_replica(lab)
    for repo in ("azure", "gcs"):
        started = int(time.time())
        backup = run_documented("backup.yml", backup_repo=repo)  # full by default
        assert backup.returncode == 0, backup.stdout[-3000:]
        assert_last_full_backup(lab, primary, repo, started)
        started = int(time.time())
        drill = run_documented("restore-drill.yml", drill_repo=repo)
        assert drill.returncode == 0, drill.stdout[-3000:]
        assert_drill_report(lab, drill.stdout, repo, started)


def wal_segments(lab: Lab, host: str, repo_key: int) -> set[str]:
    """Names of the WAL segments a repository's archive holds (every archive id)."""
    ls = (
        f"{AS_PG}pgbackrest --stanza=zapora --repo={repo_key} --log-level-console=warn "
        "repo-ls --recurse archive/zapora"
    )
    return set(re.findall(r"/([0-9A-F]{24})-", lab.ssh(host, ls).stdout))


def test_each_repository_holds_what_its_schedule_says(lab: Lab) -> None:
    """`pgbackrest info` per repository, after the backups above (each repository holds at
    least its install-time full and this run's): GCS holds full backups only; S3 keeps
    every WAL segment since its oldest backup (point-in-time recovery), while a repository
    with `pgbackrest_<repo>_pitr: false` (Azure; GCS too outside the lab) keeps continuous
    WAL only since its newest backup: of the segments S3 holds between its two newest
    backups, it holds none (repo-retention-archive-type=diff, repo-retention-archive=1;
    pgBackRest's expire runs after each backup to that repository)."""
    primary, _ = primary_and_replica(lab)
    info = pgbackrest_info(lab, primary)[0]
    mine = {
        key: sorted(
            (b for b in info["backup"] if b["database"]["repo-key"] == key),
            key=lambda b: b["timestamp"]["start"],
        )
        for key in (1, 2, 3)
    }
    for key, repo in enumerate(REPOS, start=1):
        kinds = [b["type"] for b in mine[key]]
        print(f"{repo}: {kinds.count('full')} full, {kinds.count('diff')} diff")
    assert {b["type"] for b in mine[3]} == {"full"}, [b["label"] for b in mine[3]]
    conf = lab.ssh(
        primary, "grep -E '^repo[0-9]-retention-archive=' /etc/pgbackrest/pgbackrest.conf"
    )
    lean = sorted(
        int(k) for k in re.findall(r"^repo([0-9])-retention-archive=1$", conf.stdout, re.M)
    )
    assert 2 in lean, f"azure keeps every WAL segment:\n{conf.stdout}"
    if 3 not in lean:
        record(
            "e2e GCS keeps WAL only since its newest backup",
            "the lab's GCS emulator answers pgBackRest's deletes wrongly (expire aborts), "
            "so the lab sets pgbackrest_gcs_pitr: true; the setting is checked rendered "
            "(tests/unit/test_pgbackrest_schedules.py) and live on Azure",
        )
    in_s3 = wal_segments(lab, primary, 1)
    for key in lean:
        repo = REPOS[key - 1]
        assert len(mine[key]) >= 2, f"{repo}: fewer than two backups: {mine[key]}"
        older, newest = mine[key][-2], mine[key][-1]
        between = {w for w in in_s3 if older["archive"]["stop"] < w < newest["archive"]["start"]}
        assert between, (
            f"s3 holds no WAL between {repo}'s backups {older['label']} and "
            f"{newest['label']}: nothing to compare"
        )
        kept = between & wal_segments(lab, primary, key)
        print(
            f"{repo}: of {len(between)} segments between its two newest backups, holds {len(kept)}"
        )
        assert not kept, f"{repo} keeps WAL between its backups: {sorted(kept)[:5]}"


# Runs with the emulators' venv on mon1 (ports and the azurite account from the bucket
# tool's settings there); argv[1] maps each store to an epoch. It lists the three stores'
# pgBackRest buckets through each emulator's own HTTP API on loopback, reads the first 8
# bytes of every object written since that store's epoch (a ranged GET: moto keeps its
# objects in memory, azurite packs them into extent files) and prints, per store, the
# keys it read and those without OpenSSL's header. The GETs go out through plain urllib,
# 8 at a time: through boto3 and the Azure SDK one by one the same reads took 48 s
# instead of about 8; the SDKs only sign (a presigned URL per S3 object, one container
# SAS).
OBJECT_HEADERS = r"""
import datetime
import email.utils
import json
import sys
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import boto3
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

cfg = json.load(open("/etc/zapora-object-store/emulators.json"))
since = json.loads(sys.argv[1])
bucket = "zapora-pgbackrest"
objects = []  # (store, key, url of its bytes), written since the store's epoch


def get(url, head=False):
    req = urllib.request.Request(url, headers={"Range": "bytes=0-7"} if head else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read()


def add(store, key, written, url):
    if written.timestamp() >= since[store]:
        objects.append((store, key, url))


s3 = boto3.client(
    "s3", endpoint_url=f"http://127.0.0.1:{cfg['s3_port']}", region_name="us-east-1",
    aws_access_key_id="e2e", aws_secret_access_key="e2e",
)
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
    for o in page.get("Contents", []):
        url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": o["Key"]})
        add("s3", o["Key"], o["LastModified"], url)

account = cfg["azure_account"]
sas = generate_container_sas(
    account, bucket, account_key=cfg["azure_key"],
    permission=ContainerSasPermissions(read=True, list=True),
    expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=10),
)
azure = f"http://127.0.0.1:{cfg['azure_port']}/{account}/{bucket}"
marker = ""
while True:
    page = ET.fromstring(get(f"{azure}?restype=container&comp=list&marker={marker}&{sas}"))
    for blob in page.findall("Blobs/Blob"):
        name = blob.findtext("Name")
        written = email.utils.parsedate_to_datetime(blob.findtext("Properties/Last-Modified"))
        add("azure", name, written, f"{azure}/{urllib.parse.quote(name, safe='/')}?{sas}")
    marker = urllib.parse.quote(page.findtext("NextMarker", ""))
    if not marker:
        break

gcs = f"http://127.0.0.1:{cfg['gcs_port']}"
token = ""
while True:
    page = json.loads(get(f"{gcs}/storage/v1/b/{bucket}/o?pageToken={token}"))
    for o in page.get("items", []):
        name = urllib.parse.quote(o["name"], safe="")
        url = f"{gcs}/download/storage/v1/b/{bucket}/o/{name}?alt=media"
        add("gcs", o["name"], datetime.datetime.fromisoformat(o["updated"]), url)
    token = page.get("nextPageToken")
    if not token:
        break

report = {store: {"read": [], "not_encrypted": []} for store in since}
with ThreadPoolExecutor(8) as pool:
    heads = pool.map(lambda o: get(o[2], head=True)[:8], objects)
    for (store, key, _), head in zip(objects, heads):
        report[store]["read"].append(key)
        if head != b"Salted__":
            report[store]["not_encrypted"].append(key)
print(json.dumps(report))
"""


def test_every_backup_object_is_encrypted(lab: Lab) -> None:
    """What the stores hold, read on mon1: every object written since the newest full
    backup of each repository began (that backup's files, the WAL archived since, the
    rewritten info files) starts with "Salted__", OpenSSL's header of pgBackRest's
    aes-256-cbc. The cipher setting alone (the first test) would not show a file written
    around it. Older objects were read by the run that wrote them: each run of this
    module makes a full backup in every repository, and reading them all again would grow
    by ~4 s per run on a lab that lives on (~1,350 objects per backup and repository)."""
    primary, _ = primary_and_replica(lab)
    info = pgbackrest_info(lab, primary)[0]
    newest: dict[str, dict[str, Any]] = {}
    for key, repo in enumerate(REPOS, start=1):
        fulls = [
            b for b in info["backup"] if b["database"]["repo-key"] == key and b["type"] == "full"
        ]
        assert fulls, f"{repo}: no full backup"
        newest[repo] = max(fulls, key=lambda b: b["timestamp"]["start"])
    # The stores stamp whole seconds: a margin, so the backup's first files are in.
    since = {repo: b["timestamp"]["start"] - 2 for repo, b in newest.items()}
    python = "/opt/zapora-object-store/bin/python"
    script = f"{python} - '{json.dumps(since)}' <<'EOF'\n{OBJECT_HEADERS}\nEOF"
    report = json.loads(lab.ssh(lab.groups["object_store"][0], script, timeout=180).stdout)
    print({store: len(r["read"]) for store, r in report.items()})
    for repo, r in report.items():
        label = newest[repo]["label"]
        # The time filter let that backup's own files through (it holds hundreds).
        in_backup = [k for k in r["read"] if f"/backup/zapora/{label}/" in k]
        assert len(in_backup) > 100, f"{repo}: {len(in_backup)} objects read of backup {label}"
        assert r["not_encrypted"] == [], f"{repo}: not encrypted: {r['not_encrypted'][:10]}"


def timeline(name: str) -> int:
    """The timeline of an archive entry: a WAL folder or segment, or a .history file."""
    return int(name[:8], 16)


def test_no_restored_copy_archived_into_production(lab: Lab) -> None:
    """Run after the restore and the drills above: each restored copy was promoted onto
    a timeline above the cluster's (PostgreSQL picks one past the archive's newest), so a
    copy that archived would have left WAL or a .history of a timeline above the cluster's
    own in some repository."""
    primary, _ = primary_and_replica(lab)
    # The primary's current WAL file names the timeline it writes now
    # (pg_control_checkpoint() would lag until the first checkpoint after a promotion).
    current = timeline(psql(lab, primary, "SELECT pg_walfile_name(pg_current_wal_lsn())"))
    for key, repo in enumerate(REPOS, start=1):
        ls = f"{AS_PG}pgbackrest --stanza=zapora --repo={key} --log-level-console=warn repo-ls"
        archive_ids = lab.ssh(primary, f"{ls} archive/zapora").stdout.split()
        ids = [a for a in archive_ids if re.fullmatch(r"[0-9]+-[0-9]+", a)]
        assert ids, f"{repo}: no archive id in {archive_ids}"
        for archive_id in ids:
            # One listing level is enough: a segment lives in the folder named after its
            # timeline and log (0000000300000000/000000030000000000000012-<sha>...).
            names = lab.ssh(primary, f"{ls} archive/zapora/{archive_id}").stdout.split()
            assert names, f"{repo}: archive/zapora/{archive_id} is empty"
            above = [n for n in names if timeline(n) > current]
            assert not above, f"{repo}: above timeline {current}: {above}"
