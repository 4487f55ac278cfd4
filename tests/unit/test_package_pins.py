"""Package pins and unattended-upgrades: the common role's unattended-upgrades settings
rendered on the controller (its own template and defaults), and every tier's pin read from
its install tasks.

- Security updates still flow: the Debian-Security origins stay, and ordinary packages
  (openssh-server, openssl, libssl3t64, sudo, chrony, libc6) match no blacklist entry.
- Every package a role pins (the apt_pin imports in roles/*/tasks/install.yml) is on the
  blacklist, so no host's daily timer upgrades a cluster member on its own: upgrade.yml does.
- Every pin has a default version line in its role's defaults.
Each render takes a few seconds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.unit.local_playbook import run_playbook

REPO = Path(__file__).resolve().parents[2]
COMMON = REPO / "roles" / "common"

PLAY = f"""
- hosts: localhost
  connection: local
  gather_facts: false
  vars_files: [{COMMON / "defaults" / "main.yml"}]
  tasks:
    - name: Render the unattended-upgrades settings
      ansible.builtin.template:
        src: {COMMON / "templates" / "52zapora-unattended-upgrades.j2"}
        dest: "{{{{ out_dir }}}}/52zapora-unattended-upgrades"
        mode: '0644'
"""

NOT_CLUSTER = [
    "openssh-server",
    "openssl",
    "libssl3t64",
    "sudo",
    "chrony",
    "libc6",
    "python3-psycopg2",
    "libpq5",
    "postgresql-common",
    "prometheus-postgres-exporter",
    "docker.io",
]


def pinned_packages() -> dict[str, tuple[list[str], str]]:
    """Every apt_pin import in the roles' install tasks: name -> (packages, version variable)."""
    pins: dict[str, tuple[list[str], str]] = {}
    for path in sorted(REPO.glob("roles/*/tasks/install.yml")):
        for task in yaml.safe_load(path.read_text()) or []:
            if (task.get("ansible.builtin.import_role") or {}).get("name") != "apt_pin":
                continue
            v = task["vars"]
            # The tasks name packages through the role's own variables; these are their defaults.
            packages = [
                p.replace("{{ postgresql_version }}", "17")
                .replace("{{ prometheus_package }}", "prometheus")
                .replace("{{ alertmanager_package }}", "prometheus-alertmanager")
                .replace("{{ node_exporter_package }}", "prometheus-node-exporter")
                for p in v["apt_pin_packages"]
            ]
            assert "{{" not in " ".join(packages), f"{path}: unresolved package name in {packages}"
            assert v["apt_pin_version"] == "{{ " + v["apt_pin_variable"] + " }}", f"{path}: {v}"
            pins[v["apt_pin_name"]] = (packages, v["apt_pin_variable"])
    return pins


def rendered(tmp_path: Path) -> str:
    run = run_playbook(tmp_path, PLAY, {"out_dir": str(tmp_path)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    return (tmp_path / "52zapora-unattended-upgrades").read_text()


def blacklist(text: str) -> list[str]:
    block = re.search(r"Unattended-Upgrade::Package-Blacklist \{(.*?)\};", text, re.S)
    assert block, text
    return re.findall(r'"([^"]+)";', block.group(1))


def test_every_tier_pins_its_cluster_packages() -> None:
    pins = pinned_packages()
    assert set(pins) >= {
        "etcd",
        "redis",
        "postgresql",
        "patroni",
        "pgbackrest",
        "nginx",
        "prometheus",
        "alertmanager",
        "node_exporter",
    }, sorted(pins)
    defaults: dict[str, object] = {}
    for path in REPO.glob("roles/*/defaults/main.yml"):
        defaults.update(yaml.safe_load(path.read_text()) or {})
    for name, (_packages, variable) in pins.items():
        assert str(defaults.get(variable, "")).strip(), f"pin {name}: {variable} has no default"


def test_blacklist_holds_back_every_pinned_package_and_nothing_else(tmp_path: Path) -> None:
    text = rendered(tmp_path)
    patterns = blacklist(text)
    assert patterns, text
    # unattended-upgrades matches each entry with re.match against the package name.

    def held(name: str) -> bool:
        return any(re.match(p, name) for p in patterns)

    pinned = [p for packages, _ in pinned_packages().values() for p in packages]
    assert [p for p in pinned if not held(p)] == [], patterns
    assert [p for p in NOT_CLUSTER if held(p)] == [], patterns
    # Security updates keep coming for the rest.
    assert "label=Debian-Security" in text, text


def test_rendered_settings_parse_with_apt_config(tmp_path: Path) -> None:
    text = rendered(tmp_path)
    tool = shutil.which("apt-config")
    if tool is None:
        print(
            "NOT RUN: apt-config is not installed on this controller; "
            "the role's validate: runs it on each host"
        )
        assert "Package-Blacklist" in text
        return
    out = subprocess.run(
        [tool, "-c", str(tmp_path / "52zapora-unattended-upgrades"), "dump"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert 'Unattended-Upgrade::Package-Blacklist:: "patroni$";' in out, out
