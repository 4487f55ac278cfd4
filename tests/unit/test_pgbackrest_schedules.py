"""Each pgBackRest repository's own schedule and retention, rendered by Ansible on the
controller from the role's defaults (the lab converges the same files: the e2e test
tests/e2e/test_backup.py reads them on db1 and db2).

The design (docs/postgresql.md, "What each repository holds"): S3 keeps 30 days of
point-in-time recovery (a full daily, a differential hourly, every WAL segment); Azure a
daily restore point over 90 days (a full weekly, a differential the other days); GCS a
monthly restore point over 7 years (a full on the 1st, nothing else). Azure and GCS keep
continuous WAL only since their newest backup. systemd itself (`systemd-analyze
calendar`) counts what each calendar fires over the repository's retention.
"""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.not_run import record
from tests.unit.local_playbook import run_playbook

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "roles" / "pgbackrest" / "templates"

PLAYBOOK = """\
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: The role's repositories and schedules, as a run collects them
      ansible.builtin.include_role:
        name: pgbackrest
        tasks_from: repositories
        public: true
    - name: Render pgbackrest.conf
      ansible.builtin.template:
        src: "{{ templates }}/pgbackrest.conf.j2"
        dest: "{{ out }}/pgbackrest.conf"
        mode: '0600'
    - name: Render each timer
      ansible.builtin.template:
        src: "{{ templates }}/zapora-pgbackrest-backup@.timer.j2"
        dest: "{{ out }}/{{ item.timer }}"
        mode: '0644'
      vars:
        pgbackrest_timer_calendar: "{{ item.calendar }}"
      loop: "{{ pgbackrest_backup_schedules }}"
"""


def render(tmp_path: Path, extra: dict[str, object] | None = None) -> tuple[str, dict[str, str]]:
    """pgbackrest.conf's text and {timer file name: its OnCalendar}."""
    out = tmp_path / "out"
    out.mkdir()
    result = run_playbook(
        tmp_path,
        PLAYBOOK,
        {"templates": str(TEMPLATES), "out": str(out), **(extra or {})},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    timers = {}
    for path in out.glob("*.timer"):
        found = re.search(r"^OnCalendar=(.+)$", path.read_text(), re.M)
        assert found, path.read_text()
        timers[path.name] = found.group(1)
    return (out / "pgbackrest.conf").read_text(), timers


def repo_options(conf: str, index: int) -> dict[str, str]:
    prefix = f"repo{index}-"
    return {
        k[len(prefix) :]: v
        for k, v in re.findall(r"^([a-z0-9-]+)=(.*)$", conf, re.M)
        if k.startswith(prefix)
    }


def fires_within(calendar: str, days: int) -> int:
    """How often systemd fires `calendar` in the `days` after next 2027-01-01 (a fixed
    start, so the count does not depend on today)."""
    tool = shutil.which("systemd-analyze")
    assert tool
    start = datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)
    end = start + datetime.timedelta(days=days)
    out = subprocess.run(
        [
            tool,
            "calendar",
            "--iterations=3000",
            f"--base-time={start:%Y-%m-%d %H:%M:%S} UTC",
            calendar,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"TZ": "UTC", "PATH": "/usr/bin:/bin"},
    ).stdout
    stamps = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", out)
    times = [
        datetime.datetime.strptime(s, "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.UTC)
        for s in stamps
    ]
    assert len(times) < 3000 or times[-1] >= end, f"{calendar}: more than 3000 firings"
    return sum(1 for t in times if t < end)


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """Rendered once from the role's defaults."""
    return render(tmp_path_factory.mktemp("defaults"))


def test_each_repository_has_its_own_timers(defaults: tuple[str, dict[str, str]]) -> None:
    _, timers = defaults
    assert timers == {
        "zapora-pgbackrest-backup@s3-full.timer": "*-*-* 01:15:00",
        "zapora-pgbackrest-backup@s3-diff.timer": "*-*-* *:45:00",
        "zapora-pgbackrest-backup@azure-full.timer": "Sun *-*-* 02:15:00",
        "zapora-pgbackrest-backup@azure-diff.timer": "Mon..Sat *-*-* 02:15:00",
        "zapora-pgbackrest-backup@gcs-full.timer": "*-*-01 03:15:00",
    }, timers


def test_only_s3_keeps_every_wal_segment(defaults: tuple[str, dict[str, str]]) -> None:
    conf, _ = defaults
    s3, azure, gcs = (repo_options(conf, i) for i in (1, 2, 3))
    assert (s3["retention-full"], azure["retention-full"], gcs["retention-full"]) == (
        "30",
        "90",
        "2555",
    )
    assert {s3["retention-full-type"], azure["retention-full-type"]} == {"time"}
    # S3: pgBackRest's default, every WAL segment of every kept backup (PITR over 30 days).
    assert "retention-archive" not in s3 and "retention-archive-type" not in s3, s3
    # Azure and GCS: continuous WAL since the newest backup only.
    for repo in (azure, gcs):
        assert (repo["retention-archive-type"], repo["retention-archive"]) == ("diff", "1"), repo
        assert repo["retention-diff"] == "9999999", repo


def test_a_repository_switched_off_or_without_diffs_gets_no_timer(tmp_path: Path) -> None:
    conf, timers = render(
        tmp_path,
        {
            "pgbackrest_azure_enabled": False,
            "pgbackrest_s3_diff_on_calendar": "",
            "pgbackrest_s3_pitr": False,
        },
    )
    assert set(timers) == {
        "zapora-pgbackrest-backup@s3-full.timer",
        "zapora-pgbackrest-backup@gcs-full.timer",
    }, timers
    assert "repo2-" not in conf
    assert repo_options(conf, 1)["retention-archive"] == "1"


def test_backups_each_repository_receives_over_its_retention(
    defaults: tuple[str, dict[str, str]],
) -> None:
    """What each store receives over its retention: before, every store got a full daily
    and a differential hourly (2,555 fulls and ~61,000 differentials in GCS over 7 years)."""
    if shutil.which("systemd-analyze") is None:
        record(
            "pgBackRest calendars counted by systemd-analyze",
            "systemd-analyze is not installed on this machine",
        )
        pytest.fail("systemd-analyze is missing: install the systemd package")
    _, timers = defaults
    days = {"s3": 30, "azure": 90, "gcs": 2555}
    instances = {name.split("@")[1].removesuffix(".timer"): cal for name, cal in timers.items()}
    counts = {i: fires_within(cal, days[i.split("-")[0]]) for i, cal in instances.items()}
    print(counts)
    assert counts["s3-full"] == 30 and counts["s3-diff"] == 30 * 24
    assert counts["azure-full"] in (12, 13) and counts["azure-diff"] in (77, 78)
    assert counts["gcs-full"] in (83, 84), counts
