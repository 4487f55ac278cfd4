"""prometheus.yml as the prometheus role renders it (its template, defaults and vars on the
controller, no host converged): the API's and worker's metrics ports (the file-based jobs)
are scraped over HTTPS, verified against the internal CA and the name every app host's
certificate carries; the exporters' jobs keep their own TLS settings. That the running
ports refuse plain HTTP and TLS 1.2 is tests/e2e/test_internal_tls.py's part."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.unit.local_playbook import run_playbook

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "prometheus"

PLAY = f"""
- hosts: mon1
  connection: local
  gather_facts: false
  vars_files: [{ROLE / "defaults" / "main.yml"}, {ROLE / "vars" / "main.yml"}]
  tasks:
    - name: Render prometheus.yml
      ansible.builtin.template:
        src: {ROLE / "templates" / "prometheus.yml.j2"}
        dest: "{{{{ out_dir }}}}/prometheus.yml"
        mode: '0644'
"""


def defaults(role: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(
        (REPO / "roles" / role / "defaults" / "main.yml").read_text()
    )
    return loaded


def test_the_colour_metrics_jobs_scrape_over_verified_https(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.ini"
    python = "ansible_python_interpreter=/usr/bin/python3"
    hosts = {"monitoring": "mon1 ansible_host=10.0.0.41", "app": "app1 ansible_host=10.0.0.21"}
    inventory.write_text("".join(f"[{group}]\n{host} {python}\n" for group, host in hosts.items()))
    run = run_playbook(tmp_path, PLAY, {"out_dir": str(tmp_path)}, inventory=str(inventory))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    d = defaults("prometheus")
    assert d["prometheus_file_sd_tls_name"] == defaults("app")["app_api_tls_name"]
    for name in d["prometheus_file_sd_jobs"]:
        assert jobs[name]["scheme"] == "https", jobs[name]
        assert jobs[name]["tls_config"] == {
            "ca_file": d["prometheus_internal_ca_file"],
            "server_name": d["prometheus_file_sd_tls_name"],
        }
    # The exporters' jobs as before: HTTPS with Prometheus's client certificate.
    assert jobs["node"]["scheme"] == "https"
    assert jobs["node"]["tls_config"]["cert_file"] == f"{d['prometheus_tls_dir']}/prometheus.crt"
    # Prometheus and Alertmanager serve HTTPS only too (tests/unit/test_monitoring_tls.py).
    for name in ("prometheus", "alertmanager"):
        assert jobs[name]["scheme"] == "https", jobs[name]
        assert jobs[name]["tls_config"]["ca_file"] == d["prometheus_internal_ca_file"]
