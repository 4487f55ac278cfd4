"""Settings that would lock the controller out are refused by the common role's preflight.

Each case runs the real preflight task file with ansible-playbook on the controller
(connection local: the checks are asserts plus `ssh-keygen -y` on the controller) and
expects a failure whose message names the variables to fix, before any host is touched.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.unit.local_playbook import run_playbook

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deploy_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A throwaway ed25519 key pair standing for the key Ansible connects with."""
    directory = tmp_path_factory.mktemp("key")
    key = directory / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "deploy", "-f", str(key)],
        check=True,
    )
    return key, (directory / "id_ed25519.pub").read_text().strip()


def run_preflight(tmp_path: Path, extra: dict[str, object]) -> subprocess.CompletedProcess[str]:
    playbook = (
        "- hosts: localhost\n"
        "  connection: local\n"
        "  gather_facts: true\n"
        "  gather_subset: [min]\n"
        "  tasks:\n"
        "    - ansible.builtin.include_role:\n"
        "        name: common\n"
        "        tasks_from: preflight\n"
    )
    return run_playbook(tmp_path, playbook, extra)


def base(key: Path, public: str) -> dict[str, object]:
    return {
        "ansible_user": "deploy",
        "ansible_ssh_private_key_file": str(key),
        "firewall_ssh_ports": [22, 22022],
        "common_admin_users": [{"name": "deploy", "ssh_keys": [public]}],
    }


def test_the_base_settings_pass(tmp_path: Path, deploy_key: tuple[Path, str]) -> None:
    # The refusals below are only meaningful if the same settings minus the fault pass.
    result = run_preflight(tmp_path, base(*deploy_key))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"common_ssh_port": 2222}, ["common_ssh_port", "firewall_ssh_ports"]),
        ({"ansible_port": 2200}, ["ansible_port", "firewall_ssh_ports"]),
        (
            {"common_admin_users": [{"name": "deploy", "state": "absent"}]},
            ["common_admin_users", "ansible_user"],
        ),
        (
            {
                "common_admin_users": [
                    {"name": "deploy", "ssh_keys": ["ssh-ed25519 AAAAC3NzaOTHERKEY other"]}
                ]
            },
            ["common_admin_users", "ssh_keys"],
        ),
    ],
    ids=["ssh-port-not-open", "ansible-port-not-open", "deploy-user-removed", "deploy-key-dropped"],
)
def test_a_lockout_is_refused_naming_the_variables(
    tmp_path: Path, deploy_key: tuple[Path, str], change: dict[str, object], names: list[str]
) -> None:
    result = run_preflight(tmp_path, base(*deploy_key) | change)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"the preflight accepted {change}:\n{output}"
    failed = [line for line in output.splitlines() if "fatal:" in line or '"msg"' in line]
    assert failed, output
    for name in names:
        assert name in output, f"the refusal does not name {name}:\n{output}"
    assert "Assert" in output
