"""What app_replicas_max changes in the files the roles write (docs/operator-guide.md,
"Autoscaling"), rendered by Ansible on the controller from the roles' own defaults: the
edge's upstreams and proxy settings, the firewall's port lists and the app hosts' Compose
override. With the defaults (one replica) every one of them is what it was before
autoscaling, byte for byte; with four, every replica slot's port is listed, opened and
published, and `docker compose config` accepts the Compose project (where Compose exists)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.not_run import record
from tests.unit.local_playbook import run_ansible_playbook

REPO = Path(__file__).resolve().parents[2]

INVENTORY = """\
all:
  hosts:
    localhost:
      ansible_connection: local
      ansible_python_interpreter: "{{ ansible_playbook_python }}"
  children:
    app:
      hosts:
        app1: {ansible_host: 10.99.0.21}
        app2: {ansible_host: 10.99.0.22}
"""

PLAYBOOK = """\
- hosts: localhost
  gather_facts: false
  vars_files:
    - "{{ repo }}/roles/nginx/defaults/main.yml"
    - "{{ repo }}/roles/firewall/defaults/main.yml"
  tasks:
    - name: The edge's upstreams and proxy settings
      ansible.builtin.template:
        src: "{{ repo }}/roles/nginx/templates/{{ item }}.j2"
        dest: "{{ out }}/{{ item }}"
        mode: '0644'
      loop: [upstreams.conf, proxy.conf]
      vars:
        # proxy.conf's security headers come from the role's defaults; the CA path from its vars.
        _nginx_upstream_ca_file: /etc/nginx/zapora/internal-ca.crt
    - name: The firewall's app ports
      ansible.builtin.copy:
        content: >-
          {{ {'upstream': firewall_app_upstream_ports,
              'metrics': firewall_app_metrics_ports} | to_json }}
        dest: "{{ out }}/firewall.json"
        mode: '0644'
    - name: The colours' directories
      ansible.builtin.file:
        path: "{{ out }}/{{ item }}"
        state: directory
        mode: '0755'
      loop: [blue, green]
    - name: The app hosts' Compose override
      ansible.builtin.include_role:
        name: app
        tasks_from: compose_override
      vars:
        app_base_dir: "{{ out }}"
    - name: Prometheus' targets of the API and the worker (blue running)
      ansible.builtin.include_role:
        name: app
        tasks_from: file_sd
      vars:
        app_file_sd_colours: [blue]
"""

# upstreams.conf as the nginx role wrote it before autoscaling, for two app hosts.
UPSTREAMS_BEFORE = """\
#
# managed
#
# One upstream per colour, each listing every host of the 'app' group.
# Passive health: a server failing 3 times is left out for 10s.
upstream zapora_blue {
    server 10.99.0.21:8001 max_fails=3 fail_timeout=10s;
    server 10.99.0.22:8001 max_fails=3 fail_timeout=10s;
    keepalive 32;
}
upstream zapora_green {
    server 10.99.0.21:8002 max_fails=3 fail_timeout=10s;
    server 10.99.0.22:8002 max_fails=3 fail_timeout=10s;
    keepalive 32;
}
"""

# The lab's override before autoscaling (app_container_healthchecks: false).
OVERRIDE_BEFORE = """\
# Managed by Ansible (role app): local changes are overwritten.
# app_container_healthchecks is false: nested Docker cannot exec into containers.
services:
  api:
    healthcheck: {disable: true}
  worker:
    healthcheck: {disable: true}
"""


# Prometheus' API targets before autoscaling, blue running.
FILE_SD_API_BEFORE = """\
# Managed by Ansible (deploy.yml, role app): local changes are overwritten.
- targets: ["10.99.0.21:9310", "10.99.0.22:9310"]
  labels: {colour: blue}
"""


def render(tmp_path: Path, extra: dict[str, object]) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    (tmp_path / "playbook.yml").write_text(PLAYBOOK)
    extra_vars = tmp_path / "vars.json"
    extra_vars.write_text(
        json.dumps({"repo": str(REPO), "out": str(out), "_app_file_sd_path": str(out), **extra})
    )
    result = run_ansible_playbook(
        tmp_path,
        [
            "-i",
            str(tmp_path / "hosts.yml"),
            str(tmp_path / "playbook.yml"),
            "-e",
            f"@{extra_vars}",
            "-e",
            "ansible_managed=managed",
        ],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return out


def test_one_replica_renders_exactly_what_was_there_before(tmp_path: Path) -> None:
    out = render(tmp_path, {"app_container_healthchecks": False})
    assert (out / "upstreams.conf").read_text() == UPSTREAMS_BEFORE
    proxy = (out / "proxy.conf").read_text()
    assert "proxy_next_upstream_tries 2;\n" in proxy
    assert "proxy_next_upstream_timeout" not in proxy
    assert json.loads((out / "firewall.json").read_text()) == {
        "upstream": [8001, 8002],
        "metrics": [9310, 9311, 9320, 9321],
    }
    for colour in ("blue", "green"):
        assert (out / colour / "compose.override.yml").read_text() == OVERRIDE_BEFORE
    assert (out / "zapora-api.yml").read_text() == FILE_SD_API_BEFORE
    assert "9311" in (out / "zapora-worker.yml").read_text()


def test_four_replicas_list_open_and_publish_every_slot(tmp_path: Path) -> None:
    out = render(tmp_path, {"app_replicas_max": 4, "app_container_healthchecks": False})
    upstreams = (out / "upstreams.conf").read_text()
    blue = upstreams.split("upstream zapora_blue {")[1].split("}")[0]
    servers = [line.split()[1] for line in blue.splitlines() if line.strip().startswith("server")]
    # Slot by slot, every app host in each: consecutive picks go to different hosts.
    assert servers == [f"10.99.0.2{h}:{8001 + 100 * s}" for s in range(4) for h in (1, 2)]
    assert "keepalive_time 15s;" in blue and "keepalive_timeout 15s;" in blue
    proxy = (out / "proxy.conf").read_text()
    assert "proxy_next_upstream_tries 0;\n" in proxy
    assert "proxy_next_upstream_timeout 30s;\n" in proxy
    # Still without non_idempotent: a POST that reached a replica is never sent again.
    assert "proxy_next_upstream error timeout http_502 http_503 http_504;\n" in proxy
    assert json.loads((out / "firewall.json").read_text()) == {
        "upstream": [8001, 8101, 8201, 8301, 8002, 8102, 8202, 8302],
        "metrics": [9310, 9410, 9510, 9610, 9311, 9320, 9420, 9520, 9620, 9321],
    }
    # Prometheus scrapes every slot; slots 2 and up carry replica_slot (InstanceDown leaves
    # them out: they are empty while not needed). The worker is not replicated.
    targets = yaml.safe_load((out / "zapora-api.yml").read_text())
    assert targets[0] == {
        "targets": ["10.99.0.21:9310", "10.99.0.22:9310"],
        "labels": {"colour": "blue"},
    }
    assert targets[3] == {
        "targets": ["10.99.0.21:9610", "10.99.0.22:9610"],
        "labels": {"colour": "blue", "replica_slot": "4"},
    }
    assert len(targets) == 4
    assert len(yaml.safe_load((out / "zapora-worker.yml").read_text())) == 1
    for colour, api, metrics in (("blue", 8001, 9310), ("green", 8002, 9320)):
        override = yaml.safe_load(
            (out / colour / "compose.override.yml").read_text().replace("!override", "")
        )
        services = override["services"]
        assert sorted(services) == ["api", "api-2", "api-3", "api-4", "worker"]
        for slot in (2, 3, 4):
            replica = services[f"api-{slot}"]
            assert replica["extends"] == {"file": "compose.yml", "service": "api"}
            assert replica["ports"] == [
                f"{api + 100 * (slot - 1)}:8000",
                f"{metrics + 100 * (slot - 1)}:9110",
            ]
            assert replica["labels"] == {"org.zapora.replica": str(slot)}
            assert replica["healthcheck"] == {"disable": True}
        _compose_config(out / colour, colour, api, metrics)


CONFIG_JSON = ("config", "--format", "json")


def _compose_config(directory: Path, colour: str, api: int, metrics: int) -> None:
    """`docker compose config` of the colour with its override: four api services, each
    with only its own two ports (the `!override` replaced the api's ports)."""
    docker = shutil.which("docker")
    has_compose = (
        docker is not None
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    )
    if not has_compose:
        record(
            "docker compose config of the replica services",
            "no Compose v2 plugin on this machine (checked by hand in a Debian 13 container)",
        )
        return
    shutil.copy(REPO / "compose" / "zapora.yml", directory / "compose.yml")
    secrets = directory / "secrets"
    secrets.mkdir()
    for name in ("jwt_secret", "pgpass_app", "pgpass_owner", "redis_password"):
        (secrets / name).write_text("x\n")
    for name in ("admin_password", "internal_ca"):
        (secrets / name).write_text("x\n")
    (directory / ".env").write_text(
        f"ZAPORA_COLOUR={colour}\nZAPORA_RELEASE=r1\nZAPORA_IMAGE=zapora/api:r1\n"
        f"ZAPORA_SECRETS_DIR={secrets}\nZAPORA_API_PORT={api}\n"
        f"ZAPORA_API_METRICS_PORT={metrics}\nZAPORA_WORKER_METRICS_PORT={metrics + 1}\n"
        "ZAPORA_DATABASE_URL=postgresql://x\nZAPORA_OWNER_DATABASE_URL=postgresql://x\n"
        "ZAPORA_REDIS_URL=redis://x\n"
    )
    result = subprocess.run(
        [str(docker), "compose", "--project-directory", str(directory), *CONFIG_JSON],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for slot in (1, 2, 3, 4):
        service = services["api" if slot == 1 else f"api-{slot}"]
        published = sorted(int(p["published"]) for p in service["ports"])
        assert published == [api + 100 * (slot - 1), metrics + 100 * (slot - 1)]
