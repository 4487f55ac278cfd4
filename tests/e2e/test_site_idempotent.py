"""site.yml on the converged lab: run again it changes nothing, and `--check` (what an
admin runs before a change) reports no change and no failure."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Collection

import pytest

from tests.documented import run_make
from tests.e2e.conftest import INVENTORY, REPO, Lab, venv_tool

pytestmark = pytest.mark.e2e


def run_site(*extra: str) -> subprocess.CompletedProcess[str]:
    """site.yml as the docs show it (`--check` as docs/roles.md shows it for a tier)."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    return subprocess.run(
        [
            venv_tool("ansible-playbook"),
            "-i",
            str(INVENTORY),
            str(REPO / "playbooks" / "site.yml"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=REPO,
        env=env,
    )


def assert_nothing_changed(
    lab: Lab, result: subprocess.CompletedProcess[str], hosts: Collection[str] | None = None
) -> None:
    """rc 0, and PLAY RECAP shows changed=0 and failed=0 for exactly `hosts` (default:
    every lab host; a playbook of one tier names the hosts its plays target)."""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    recap = dict(re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", result.stdout, re.M))
    assert set(recap) == set(lab.hosts if hosts is None else hosts), recap
    failed = dict(re.findall(r"^(\S+)\s+: .*failed=(\d+)", result.stdout, re.M))
    assert all(v == "0" for v in failed.values()), failed
    # Name each task that changed something, with its host: "TASK [role : name]" above it.
    changed_tasks = [
        f"{host}: {task}"
        for task, body in re.findall(
            r"^TASK \[(.+?)\] \**\n(.*?)(?=^TASK \[|^PLAY )", result.stdout, re.M | re.S
        )
        for host in re.findall(r"^changed: \[(\S+?)\]", body, re.M)
    ]
    assert all(v == "0" for v in recap.values()), f"changed: {recap}\n" + "\n".join(changed_tasks)


# Every role's idempotence on the lab as site.yml converges it (most molecule scenarios,
# and their idempotence steps, are gone). Not in CI's set: 592 s in CI's run of
# 2026-12-02, beside molecule (docs/ci.md); `make test-e2e-full` runs it.
@pytest.mark.slow(reason="make lab LAB_CONVERGE=1, a whole second site.yml (about 10 min)")
@pytest.mark.lab(exclusive=("app", "data"))
def test_a_second_site_run_changes_nothing(lab: Lab) -> None:
    # As docs/lab.md shows it: `make lab LAB_CONVERGE=1` runs site.yml again regardless of
    # the stamp; its site.yml part must change nothing.
    result = run_make("lab", LAB_CONVERGE="1", timeout=1200)
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-2000:]
    assert "scripts/lab-converge.sh" in out and "playbooks/deploy.yml" in out, out[-3000:]
    site = out.split("scripts/lab-converge.sh", 1)[1].split("playbooks/deploy.yml", 1)[0]
    assert "PLAY RECAP" in site, "site.yml did not run: " + site[-2000:]
    assert_nothing_changed(lab, subprocess.CompletedProcess(result.args, 0, site, ""))


@pytest.mark.slow
@pytest.mark.lab(exclusive=("app", "data"))
def test_check_mode_on_the_converged_lab_reports_no_change(lab: Lab) -> None:
    # Runs after the idempotence test above (file order), on a converged lab.
    assert_nothing_changed(lab, run_site("--check"))
