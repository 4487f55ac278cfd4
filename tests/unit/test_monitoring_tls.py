"""Prometheus and Alertmanager serve TLS 1.3 only (issue 20), checked with the real binaries
on the controller's loopback: the internal_ca role makes a CA and issues each monitoring
host's certificate and web config as it does on a host (the controller is its own CA host),
the prometheus and alertmanager roles' templates render the flags, prometheus.yml and the
cluster's TLS config for an inventory of two monitoring hosts (127.0.0.2, 127.0.0.3), and
Debian's `prometheus` and `prometheus-alertmanager` (`make setup-test` installs them) run
with exactly those flags. Checked:

- promtool accepts the web config (`check web-config`) and prometheus.yml (`check config`);
- each web listener completes TLS 1.3 verified against the CA by the address clients use,
  refuses TLS 1.2, and turns a plaintext request away;
- Prometheus scrapes itself and both Alertmanagers over HTTPS (`up` 1: its CA file, their
  certificates) and lists the Alertmanagers it alerts as https:// URLs;
- the two Alertmanagers form one cluster over mutual TLS on their cluster port, which
  refuses TLS 1.2.

The ports are free ones, not 9090/9093 (the lab may publish those on 127.0.0.1): the jobs'
ports are replaced, every other key (tls) is the role's default. About 75 s, most of it
the playbook.
"""

from __future__ import annotations

import getpass
import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.local_playbook import run_playbook

REPO = Path(__file__).resolve().parents[2]
PROM_ROLE = REPO / "roles" / "prometheus"
AM_ROLE = REPO / "roles" / "alertmanager"
HOSTS = {"mon1": "127.0.0.2", "mon2": "127.0.0.3"}

PLAY = f"""
- hosts: monitoring
  connection: local
  gather_facts: false
  vars_files:
    - {PROM_ROLE / "defaults" / "main.yml"}
    - {PROM_ROLE / "vars" / "main.yml"}
    - {AM_ROLE / "defaults" / "main.yml"}
    - {AM_ROLE / "vars" / "main.yml"}
  tasks:
    - name: Make the CA (the controller is its CA host)
      ansible.builtin.include_role:
        name: internal_ca

    - name: Issue Prometheus's certificate and web config as the prometheus role does
      ansible.builtin.include_role:
        name: internal_ca
        tasks_from: issue
      vars:
        internal_ca_issue_dir: "{{{{ prometheus_tls_dir }}}}"
        internal_ca_issue_name: prometheus
        internal_ca_issue_owner: "{{{{ owner }}}}"
        internal_ca_issue_web_config: "{{{{ _prometheus_web_config }}}}"

    - name: Issue Alertmanager's certificate and web config as the alertmanager role does
      ansible.builtin.include_role:
        name: internal_ca
        tasks_from: issue
      vars:
        internal_ca_issue_dir: "{{{{ alertmanager_tls_dir }}}}"
        internal_ca_issue_name: alertmanager
        internal_ca_issue_owner: "{{{{ owner }}}}"
        internal_ca_issue_web_config: "{{{{ alertmanager_tls_dir }}}}/web.yml"

    - name: Render the roles' files
      ansible.builtin.template:
        src: "{{{{ item.src }}}}"
        dest: >-
          {{{{ out_dir }}}}/{{{{ inventory_hostname }}}}.{{{{
          item.src | basename | regex_replace('[.]j2$', '') }}}}
        mode: '0644'
      loop:
        - src: {PROM_ROLE / "templates" / "prometheus.yml.j2"}
        - src: {PROM_ROLE / "templates" / "prometheus.default.j2"}
        - src: {AM_ROLE / "templates" / "prometheus-alertmanager.default.j2"}
        - src: {AM_ROLE / "templates" / "cluster-tls.yml.j2"}
"""


def role_defaults(role: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    return loaded


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make setup-test` (Debian prometheus packages)")
    return path


def free_port() -> int:
    """A port free on both hosts' loopback addresses."""
    while True:
        with socket.socket() as s:
            s.bind((HOSTS["mon1"], 0))
            port: int = s.getsockname()[1]
        with socket.socket() as s:
            try:
                s.bind((HOSTS["mon2"], port))
            except OSError:
                continue
        return port


def flags(path: Path) -> list[str]:
    found = re.search(r'^ARGS="(.*)"$', path.read_text(), re.M)
    assert found, path.read_text()
    return found.group(1).split()


@contextmanager
def running(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def https_context(ca: Path, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def ready(url: str, ca: Path) -> bool:
    with urllib.request.urlopen(url, timeout=5, context=https_context(ca)) as resp:
        return bool(resp.status == 200)


def alive_and_ready(proc: subprocess.Popen[bytes], url: str, ca: Path) -> bool:
    """Ready at the URL; a process that has exited fails at once with its exit code."""
    code = proc.poll()
    if code is not None:
        pytest.fail(f"{proc.args[0]} exited with {code} before {url} answered")
    return ready(url, ca)


def get_json(url: str, ca: Path) -> Any:
    with urllib.request.urlopen(url, timeout=5, context=https_context(ca)) as resp:
        return json.load(resp)


def wait_for(probe: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
            last = result
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def handshake(host: str, port: int, ca: Path, version: ssl.TLSVersion) -> str:
    """The negotiated version, or the error of a refused handshake."""
    ctx = https_context(ca, version)
    try:
        with (
            socket.create_connection((host, port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            return str(tls.version())
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc}"


def plaintext_reply(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return s.recv(400).decode("latin-1")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("monitoring-tls")
    web_port, am_port, cluster_port = free_port(), free_port(), free_port()
    jobs = [
        {**job, "port": {"prometheus": web_port, "alertmanager": am_port}[job["job"]]}
        for job in role_defaults(PROM_ROLE)["prometheus_scrape_jobs_default"]
        if job["group"] == "monitoring"
    ]
    inventory = tmp / "hosts.ini"
    inventory.write_text(
        "[monitoring]\n"
        + "".join(
            f"{name} ansible_host={address} ansible_connection=local "
            f"ansible_python_interpreter={sys.executable}\n"
            for name, address in HOSTS.items()
        )
    )
    extra: dict[str, object] = {
        "out_dir": str(tmp),
        "owner": getpass.getuser(),
        "internal_ca_host": "mon1",
        "internal_ca_dir": str(tmp / "ca"),
        # The venv has the cryptography library: no apt.
        "internal_ca_crypto_installed": True,
        "prometheus_tls_dir": str(tmp / "{{ inventory_hostname }}-prometheus"),
        "alertmanager_tls_dir": str(tmp / "{{ inventory_hostname }}-alertmanager"),
        "prometheus_internal_ca_file": str(tmp / "{{ inventory_hostname }}-prometheus/ca.crt"),
        "prometheus_listen_address": "{{ ansible_host }}:" + str(web_port),
        "prometheus_scrape_jobs_default": jobs,
        "prometheus_alertmanager_port": am_port,
        "prometheus_file_sd_jobs": {},
        "prometheus_scrape_interval": "1s",
        "prometheus_scrape_timeout": "1s",
        "prometheus_evaluation_interval": "1s",
        "alertmanager_listen_address": "{{ ansible_host }}:" + str(am_port),
        "alertmanager_cluster_listen_address": "{{ ansible_host }}:" + str(cluster_port),
        "alertmanager_storage_path": str(tmp / "{{ inventory_hostname }}-am-data"),
    }
    run = run_playbook(tmp, PLAY, extra, inventory=str(inventory))
    failed = [line for line in run.stdout.splitlines() if line.startswith("fatal:")]
    assert run.returncode == 0, "\n".join(failed) + run.stdout[-3000:] + run.stderr[-2000:]
    return {
        "tmp": tmp,
        "web_port": web_port,
        "am_port": am_port,
        "cluster_port": cluster_port,
        "ca": tmp / "ca" / "ca.crt",
    }


def test_promtool_accepts_the_web_config_and_prometheus_yml(rendered: dict[str, Any]) -> None:
    tmp: Path = rendered["tmp"]
    promtool = tool("promtool")
    web = tmp / "mon1-prometheus" / "web.yml"
    assert yaml.safe_load(web.read_text())["tls_server_config"]["min_version"] == "TLS13"
    config_file = tmp / "mon1.prometheus.yml"
    for args in (["check", "web-config", str(web)], ["check", "config", str(config_file)]):
        out = subprocess.run([promtool, *args], capture_output=True, text=True, check=False)
        assert out.returncode == 0, (args, out.stdout, out.stderr)
    config = yaml.safe_load((tmp / "mon1.prometheus.yml").read_text())
    (alerting,) = config["alerting"]["alertmanagers"]
    assert alerting["scheme"] == "https", alerting
    assert alerting["tls_config"] == {"ca_file": str(tmp / "mon1-prometheus" / "ca.crt")}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name in ("prometheus", "alertmanager"):
        assert jobs[name]["scheme"] == "https", jobs[name]
        assert jobs[name]["tls_config"]["ca_file"] == str(tmp / "mon1-prometheus" / "ca.crt")


def test_the_flags_name_the_web_configs_and_the_cluster_tls(rendered: dict[str, Any]) -> None:
    tmp: Path = rendered["tmp"]
    prom = flags(tmp / "mon1.prometheus.default")
    assert f"--web.config.file={tmp}/mon1-prometheus/web.yml" in prom, prom
    am = flags(tmp / "mon1.prometheus-alertmanager.default")
    assert f"--web.config.file={tmp}/mon1-alertmanager/web.yml" in am, am
    assert f"--cluster.tls-config={tmp}/mon1-alertmanager/cluster-tls.yml" in am, am
    port = rendered["cluster_port"]
    assert f"--cluster.advertise-address={HOSTS['mon1']}:{port}" in am, am
    assert f"--cluster.peer={HOSTS['mon2']}:{port}" in am, am
    # Links in alerts and notifications say https:// and a name the certificate carries
    # (the binaries' own guess would be http://, which these listeners do not serve).
    for argv, listen in ((prom, "--web.listen-address="), (am, "--web.listen-address=")):
        listen_port = next(a for a in argv if a.startswith(listen)).rsplit(":", 1)[-1]
        assert f"--web.external-url=https://mon1:{listen_port}/" in argv, argv
    cluster = yaml.safe_load((tmp / "mon1.cluster-tls.yml").read_text())
    assert cluster["tls_server_config"]["min_version"] == "TLS13", cluster
    assert cluster["tls_server_config"]["client_auth_type"] == "RequireAndVerifyClientCert"


def alertmanager_argv(tmp: Path, host: str) -> list[str]:
    config = tmp / "alertmanager.yml"
    config.write_text("route: {receiver: default}\nreceivers: [{name: default}]\n")
    # Where the role writes it (the flags name it there).
    shutil.copy(tmp / f"{host}.cluster-tls.yml", tmp / f"{host}-alertmanager" / "cluster-tls.yml")
    argv = flags(tmp / f"{host}.prometheus-alertmanager.default")
    return [tool("prometheus-alertmanager")] + [
        f"--config.file={config}" if a.startswith("--config.file=") else a for a in argv
    ]


def prometheus_argv(tmp: Path, host: str) -> list[str]:
    argv = flags(tmp / f"{host}.prometheus.default")
    replace = {
        "--config.file=": f"--config.file={tmp / f'{host}.prometheus.yml'}",
        "--storage.tsdb.path=": f"--storage.tsdb.path={tmp / f'{host}-tsdb'}",
    }
    out = [tool("prometheus")]
    for a in argv:
        key = next((k for k in replace if a.startswith(k)), None)
        out.append(replace[key] if key else a)
    return out


def test_prometheus_and_alertmanager_serve_tls_1_3_only(rendered: dict[str, Any]) -> None:
    tmp: Path = rendered["tmp"]
    ca: Path = rendered["ca"]
    mon1, mon2 = HOSTS["mon1"], HOSTS["mon2"]
    web, am, cluster = rendered["web_port"], rendered["am_port"], rendered["cluster_port"]
    with (
        running(alertmanager_argv(tmp, "mon1"), tmp / "am1.log") as am1,
        running(alertmanager_argv(tmp, "mon2"), tmp / "am2.log") as am2,
        running(prometheus_argv(tmp, "mon1"), tmp / "prometheus1.log") as prom1,
        running(prometheus_argv(tmp, "mon2"), tmp / "prometheus2.log") as prom2,
    ):
        logs = " ".join(str(p) for p in sorted(tmp.glob("*.log")))
        # Every listener answers before any is probed: Alertmanager can open its web port
        # seconds after Prometheus is ready (one CI run probed it first and was refused).
        for name, proc, host, port in (
            ("Prometheus", prom1, mon1, web),
            ("Prometheus", prom2, mon2, web),
            ("Alertmanager", am1, mon1, am),
            ("Alertmanager", am2, mon2, am),
        ):
            wait_for(
                lambda proc=proc, host=host, port=port: alive_and_ready(
                    proc, f"https://{host}:{port}/-/ready", ca
                ),
                f"{name} on {host} ready over HTTPS (logs: {logs})",
            )
        # Each web listener: TLS 1.3 verified by the address, TLS 1.2 refused, plain text
        # turned away with Go's 400.
        for host, port in ((mon1, web), (mon1, am), (mon2, am)):
            assert handshake(host, port, ca, ssl.TLSVersion.TLSv1_3) == "TLSv1.3", (host, port)
            refused = handshake(host, port, ca, ssl.TLSVersion.TLSv1_2)
            assert refused.startswith("refused"), (host, port, refused)
            reply = plaintext_reply(host, port)
            assert "HTTPS server" in reply, (host, port, reply)

        # The cluster: both peers over mutual TLS; the cluster port refuses TLS 1.2 too.
        def both_peers() -> dict[str, Any] | None:
            status: dict[str, Any] = get_json(f"https://{mon1}:{am}/api/v2/status", ca)
            return status if len(status["cluster"].get("peers") or []) == 2 else None

        wait_for(both_peers, f"two Alertmanager peers over TLS (logs: {logs})")
        # State crosses the TLS gossip: a silence made on mon1 shows on mon2.
        silence = {
            "matchers": [{"name": "alertname", "value": "TlsGossipProbe", "isRegex": False}],
            "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "endsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600)),
            "createdBy": "test_monitoring_tls",
            "comment": "gossip over TLS",
        }
        post = urllib.request.Request(
            f"https://{mon1}:{am}/api/v2/silences",
            data=json.dumps(silence).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(post, timeout=5, context=https_context(ca)) as resp:
            silence_id = json.load(resp)["silenceID"]
        wait_for(
            lambda: any(
                s["id"] == silence_id for s in get_json(f"https://{mon2}:{am}/api/v2/silences", ca)
            ),
            f"mon1's silence on mon2 (logs: {logs})",
        )
        assert handshake(mon1, cluster, ca, ssl.TLSVersion.TLSv1_2).startswith("refused")

        # Prometheus scrapes itself and both Alertmanagers over verified HTTPS.
        def targets_up() -> list[dict[str, Any]] | None:
            active = get_json(f"https://{mon1}:{web}/api/v1/targets", ca)["data"]["activeTargets"]
            return active if active and all(t["health"] == "up" for t in active) else None

        active = wait_for(targets_up, f"every target up over HTTPS (logs: {logs})")
        assert sorted((t["labels"]["job"], t["scrapeUrl"]) for t in active) == sorted(
            [("prometheus", f"https://{h}:{web}/metrics") for h in HOSTS.values()]
            + [("alertmanager", f"https://{h}:{am}/metrics") for h in HOSTS.values()]
        ), active
        ams = get_json(f"https://{mon1}:{web}/api/v1/alertmanagers", ca)["data"]
        assert sorted(a["url"] for a in ams["activeAlertmanagers"]) == [
            f"https://{h}:{am}/api/v2/alerts" for h in HOSTS.values()
        ], ams
