"""Run a small playbook on the controller (connection local) with the repository's roles,
for the unit tests that check a role's task files without converging a host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def run_playbook(
    tmp_path: Path,
    playbook: str,
    extra: dict[str, object],
    *,
    inventory: str = "localhost,",
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Write `playbook` and `extra` (as extra vars) under tmp_path and run them with the
    venv's ansible-playbook, HOME in tmp_path, never raising: callers check the result."""
    path = tmp_path / "playbook.yml"
    path.write_text(playbook)
    extra_vars = tmp_path / "vars.json"
    extra_vars.write_text(json.dumps(extra))
    return run_ansible_playbook(
        tmp_path, ["-i", inventory, str(path), "-e", f"@{extra_vars}", *args], env=env
    )


def run_ansible_playbook(
    tmp_path: Path, args: list[str], *, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The venv's ansible-playbook with `args`, from the repository, with its roles and
    ansible.cfg, HOME in tmp_path, never raising: callers check the result."""
    tool = Path(sys.executable).parent / "ansible-playbook"
    return subprocess.run(
        [str(tool), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
        env={
            # /usr/sbin: tools the roles' validate steps call (nft).
            "PATH": f"{tool.parent}:/usr/sbin:/usr/bin:/sbin:/bin",
            "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_FORCE_COLOR": "false",
            "HOME": str(tmp_path),
            **(env or {}),
        },
    )


def run_unreachable(
    tmp_path: Path, playbook: str, children: dict[str, list[str]], extra: object
) -> str:
    """playbooks/<playbook> on an inventory of `children` (group -> hosts) whose every host's
    address is unreachable, with `extra` as its extra vars (None: none): for a preflight
    that must refuse before it reaches a host. Fails when the run passed (it reached no
    host); returns the output, folded onto one line."""
    names = dict.fromkeys(h for members in children.values() for h in members)
    hosts = {
        h: {"ansible_host": "192.0.2.1", "ansible_port": 9, "ansible_connection": "ssh"}
        for h in names
    }
    groups = {g: {"hosts": dict.fromkeys(members)} for g, members in children.items()}
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts, "children": groups}}))
    args = ["-i", str(inventory), str(REPO / "playbooks" / playbook)]
    if extra is not None:
        args += ["-e", json.dumps(extra)]
    result = run_ansible_playbook(tmp_path, args, env={"ANSIBLE_TIMEOUT": "2"})
    assert result.returncode != 0, "the run reached no host, yet it passed"
    return " ".join((result.stdout + result.stderr).split())
