"""Bad input to `make lab` stops with one clear message and creates nothing.

Each case runs the real lab-up playbook under a second lab name, next to the running lab,
so the running lab itself provides the conflict (its published ports, its subnet).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.conftest import INVENTORY, REPO, Lab, venv_tool

pytestmark = pytest.mark.e2e

OTHER_LAB = "zapora-labcheck"


def lab_up(*extra: str) -> subprocess.CompletedProcess[str]:
    playbook = venv_tool("ansible-playbook")
    return subprocess.run(
        [
            str(playbook),
            "-i",
            str(INVENTORY),
            str(REPO / "playbooks" / "lab-up.yml"),
            "-e",
            f"lab_name={OTHER_LAB}",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )


def objects_labelled(lab_name: str) -> list[str]:
    found: list[str] = []
    for kind in ("container", "network", "volume"):
        cmd = ["docker", kind, "ls", "-q", "--filter", f"label=org.zapora.lab={lab_name}"]
        if kind == "container":
            cmd.insert(3, "-a")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
        found += [f"{kind} {x}" for x in out]
    return found


@pytest.fixture(autouse=True)
def nothing_left_behind() -> None:
    assert objects_labelled(OTHER_LAB) == []
    yield
    leftovers = objects_labelled(OTHER_LAB)
    assert leftovers == [], f"a failed lab-up left objects behind: {leftovers}"


def test_a_taken_port_is_named_and_nothing_is_created(lab: Lab) -> None:
    # The running lab's edge1 holds 127.0.0.1:8443, so the second lab cannot have it.
    result = lab_up()
    assert result.returncode != 0
    assert (
        "Taken on the controller by another program: 127.0.0.1:8443 (edge1)"
        in result.stdout + result.stderr
    )
    assert "ss -ltnp" in result.stdout + result.stderr


def test_an_overlapping_subnet_is_explained_and_nothing_is_created(lab: Lab) -> None:
    # No published ports this time; the lab subnet is the running lab's, which Docker
    # refuses to hand out twice.
    result = lab_up("-e", json.dumps({"lab_ports": []}))
    assert result.returncode != 0
    assert f"Docker could not create network {OTHER_LAB}" in result.stdout + result.stderr
    assert "lab_network_subnet" in result.stdout + result.stderr


def test_an_address_outside_the_subnet_names_the_host(lab: Lab) -> None:
    result = lab_up(
        "-e",
        json.dumps(
            {
                "lab_ports": [],
                "lab_network_subnet": "10.78.0.0/24",
                "lab_network_gateway": "10.78.0.1",
            }
        ),
    )
    assert result.returncode != 0
    assert "Host edge1: ansible_host=10.77.0.11 must be" in result.stdout + result.stderr
