"""The firewall role's ruleset template, rendered by Ansible on the controller and checked
by nft itself (`nft -c`, the role's own `validate:`), for the branches no lab or molecule
host renders: SSH only over the WireGuard admin VPN. (No kernel here has WireGuard, so the
VPN cannot run live; the summary lists that.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.not_run import record
from tests.unit.local_playbook import run_playbook

REPO = Path(__file__).resolve().parents[2]

INVENTORY = """\
all:
  hosts:
    db9:
      ansible_connection: local
      ansible_python_interpreter: "{{ ansible_playbook_python }}"
      ansible_host: 10.99.0.31
  children:
    postgres:
      hosts:
        db9:
    app:
      hosts:
        app9:
          ansible_host: 10.99.0.21
"""

PLAYBOOK = """\
- hosts: db9
  gather_facts: true
  gather_subset: [min]
  tasks:
    - name: The role's preflight resolves the rules (as in a real run)
      ansible.builtin.include_role:
        name: firewall
        tasks_from: preflight
        public: true
    - name: Render the ruleset, checked by nft as the role checks it
      ansible.builtin.template:
        src: "{{ playbook_dir }}/ruleset.nft.j2"
        dest: "{{ ruleset_out }}"
        mode: '0644'
        validate: nft -c -f %s
"""


def render(tmp_path: Path, settings: dict[str, object]) -> str:
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    template = REPO / "roles" / "firewall" / "templates" / "ruleset.nft.j2"
    (tmp_path / "ruleset.nft.j2").write_text(template.read_text())
    out = tmp_path / "ruleset.nft"
    result = run_playbook(
        tmp_path,
        PLAYBOOK,
        {**settings, "ruleset_out": str(out)},
        inventory=str(tmp_path / "hosts.yml"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return out.read_text()


@pytest.mark.parametrize("wireguard", [True, False])
def test_the_ruleset_passes_nft_check_with_and_without_the_admin_vpn(
    tmp_path: Path, wireguard: bool
) -> None:
    ruleset = render(
        tmp_path,
        {
            "common_wireguard_enabled": wireguard,
            "common_wireguard_port": 51999,
            "firewall_admin_networks": ["192.0.2.0/24"],
        },
    )
    vpn_ssh = 'iifname "wg0" tcp dport { 22, 22022 } accept comment "ssh over the admin VPN"'
    direct_ssh = 'ip saddr { 192.0.2.0/24 } tcp dport { 22, 22022 } accept comment "ssh"'
    if wireguard:
        # SSH only through the VPN: its port open to all, SSH on wg0 only, no direct rule.
        assert 'udp dport 51999 accept comment "wireguard"' in ruleset
        assert vpn_ssh in ruleset
        assert direct_ssh not in ruleset
        record(
            "the WireGuard admin VPN live (a tunnel carrying SSH)",
            "this machine's kernel has no WireGuard module; its ruleset is rendered and "
            "checked with nft -c by tests/unit/test_firewall_ruleset.py",
        )
    else:
        assert direct_ssh in ruleset
        assert "wireguard" not in ruleset
    # The group rules resolved from the inventory are there either way.
    group_rule = "ip saddr { 10.99.0.21/32, 10.99.0.31/32 } tcp dport { 5432, 6432 } accept"
    assert group_rule in ruleset
