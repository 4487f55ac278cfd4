"""site.yml run again on the converged lab changes nothing (issue 4's done-criterion)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.e2e.conftest import INVENTORY, REPO, Lab, venv_tool

pytestmark = pytest.mark.e2e


def test_a_second_site_run_changes_nothing(lab: Lab) -> None:
    playbook = venv_tool("ansible-playbook")
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    result = subprocess.run(
        [playbook, "-i", str(INVENTORY), str(REPO / "playbooks" / "site.yml")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    recap = dict(re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", result.stdout, re.M))
    assert set(recap) == set(lab.hosts), recap
    changed_tasks = re.findall(r"^changed: \[(\S+)\].*$", result.stdout, re.M)
    assert all(v == "0" for v in recap.values()), f"changed on second run: {recap}\n{changed_tasks}"
