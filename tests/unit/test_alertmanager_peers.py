"""The Alertmanagers of the monitoring group find each other: the alertmanager role's flags
file rendered on the controller (the role's own template and defaults, no host converged)
for an inventory of two monitoring hosts and of one.

Two hosts: each names the other, never itself, as `--cluster.peer` at the cluster port,
so silences are shared and an alert Prometheus sends to both pages once. One host (the
lab): clustering stays off (`--cluster.listen-address=` empty), as before. Each render
takes a few seconds.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.unit.local_playbook import run_playbook

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "alertmanager"

PLAY = f"""
- hosts: monitoring
  connection: local
  gather_facts: false
  vars_files: [{ROLE / "defaults" / "main.yml"}, {ROLE / "vars" / "main.yml"}]
  tasks:
    - name: Render the flags file
      ansible.builtin.template:
        src: {ROLE / "templates" / "prometheus-alertmanager.default.j2"}
        dest: "{{{{ out_dir }}}}/{{{{ inventory_hostname }}}}.args"
        mode: '0644'
"""


def flags(tmp_path: Path, hosts: dict[str, str]) -> dict[str, list[str]]:
    inventory = tmp_path / "hosts.ini"
    lines = ["[monitoring]"] + [
        f"{name} ansible_host={address} ansible_python_interpreter=/usr/bin/python3"
        for name, address in hosts.items()
    ]
    inventory.write_text("\n".join(lines) + "\n")
    run = run_playbook(tmp_path, PLAY, {"out_dir": str(tmp_path)}, inventory=str(inventory))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    out: dict[str, list[str]] = {}
    for name in hosts:
        text = (tmp_path / f"{name}.args").read_text()
        args = re.search(r'^ARGS="(.*)"$', text, re.M)
        assert args, text
        out[name] = args.group(1).split()
    return out


def test_two_monitoring_hosts_peer_with_each_other(tmp_path: Path) -> None:
    rendered = flags(tmp_path, {"mon1": "10.0.0.41", "mon2": "10.0.0.42"})
    assert "--cluster.peer=10.0.0.42:9094" in rendered["mon1"], rendered["mon1"]
    assert "--cluster.peer=10.0.0.41:9094" in rendered["mon2"], rendered["mon2"]
    for name, args in rendered.items():
        peers = [a for a in args if a.startswith("--cluster.peer=")]
        assert len(peers) == 1, f"{name}: {peers}"
        assert "--cluster.listen-address=0.0.0.0:9094" in args, args


def test_two_monitoring_hosts_gossip_over_tls_advertising_their_certificates_address(
    tmp_path: Path,
) -> None:
    rendered = flags(tmp_path, {"mon1": "10.0.0.41", "mon2": "10.0.0.42"})
    for name, address in (("mon1", "10.0.0.41"), ("mon2", "10.0.0.42")):
        args = rendered[name]
        assert "--cluster.tls-config=/etc/prometheus/alertmanager-tls/cluster-tls.yml" in args, args
        assert f"--cluster.advertise-address={address}:9094" in args, args
        assert "--web.config.file=/etc/prometheus/alertmanager-tls/web.yml" in args, args


def test_one_monitoring_host_keeps_clustering_off(tmp_path: Path) -> None:
    args = flags(tmp_path, {"mon1": "10.0.0.41"})["mon1"]
    assert "--cluster.listen-address=" in args, args
    assert not [a for a in args if a.startswith("--cluster.peer")], args
    assert not [a for a in args if a.startswith(("--cluster.tls", "--cluster.advertise"))], args
    assert "--web.config.file=/etc/prometheus/alertmanager-tls/web.yml" in args, args
