"""The lab itself: six hosts as the inventory describes them, reachable as real servers."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import subprocess

import pytest

from tests.documented import run_make
from tests.e2e.conftest import Lab

pytestmark = pytest.mark.e2e

EXPECTED_HOSTS = {"edge1", "app1", "app2", "db1", "db2", "mon1"}


def docker_inspect(name: str) -> dict[str, object]:
    out = subprocess.run(["docker", "inspect", name], capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"container {name} does not exist: {out.stderr.strip()}"
    data: list[dict[str, object]] = json.loads(out.stdout)
    return data[0]


def test_inventory_describes_the_six_lab_hosts(lab: Lab) -> None:
    assert set(lab.hosts) == EXPECTED_HOSTS
    subnet = ipaddress.ip_network(lab.subnet)
    addresses = [ipaddress.ip_address(h.address) for h in lab.hosts.values()]
    assert len(set(addresses)) == len(addresses), "two lab hosts share an address"
    assert all(a in subnet for a in addresses)
    # The groups of shared/ARCHITECTURE.md, as the lab lays them out.
    assert lab.groups["edge"] == ["edge1"]
    assert sorted(lab.groups["app"]) == ["app1", "app2"]
    assert sorted(lab.groups["postgres"]) == ["db1", "db2"]
    assert sorted(lab.groups["etcd"]) == ["db1", "db2", "mon1"]
    assert sorted(lab.groups["redis_sentinel"]) == ["db1", "db2", "mon1"]
    assert lab.groups["monitoring"] == ["mon1"]
    assert lab.groups["logging"] == ["mon1"]


@pytest.mark.parametrize("host", sorted(EXPECTED_HOSTS))
def test_host_answers_over_ssh_with_systemd_running(lab: Lab, host: str) -> None:
    state = lab.ssh(host, "systemctl is-system-running", check=False).stdout.strip()
    failed = lab.ssh(host, "systemctl --failed --no-legend --plain", check=False).stdout
    assert state == "running", f"{host}: systemd is {state!r}; failed units:\n{failed}"


@pytest.mark.parametrize("host", sorted(EXPECTED_HOSTS))
def test_host_name_and_address_match_the_inventory(lab: Lab, host: str) -> None:
    assert lab.ssh(host, "hostname").stdout.strip() == host
    addrs = lab.ssh(host, "ip -4 -o addr show scope global").stdout
    assert f" {lab.hosts[host].address}/" in addrs, addrs
    # The container behind it is the lab's, on the lab network, at that address.
    info = docker_inspect(lab.container(host))
    nets = info["NetworkSettings"]["Networks"]  # type: ignore[index]
    assert nets[lab.name]["IPAddress"] == lab.hosts[host].address


def test_hosts_reach_each_other_by_address(lab: Lab) -> None:
    for other in sorted(EXPECTED_HOSTS - {"edge1"}):
        lab.ssh("edge1", f"ping -c1 -W2 {lab.hosts[other].address}")


def test_published_ports_belong_to_the_lab(lab: Lab) -> None:
    for host in lab.hosts.values():
        if not host.ports:
            continue
        info = docker_inspect(lab.container(host.name))
        bindings = info["HostConfig"]["PortBindings"]  # type: ignore[index]
        for spec in host.ports:
            addr, port, container_port = spec.split(":")
            bound = bindings.get(f"{container_port}/tcp") or []
            assert {"HostIp": addr, "HostPort": port} in bound, (host.name, spec, bound)
            # Something accepts connections there: docker's proxy for this container.
            with socket.create_connection((addr, int(port)), timeout=5):
                pass


def test_a_client_without_the_lab_key_is_refused(lab: Lab) -> None:
    """The lab key is the only way in: a client without it is refused."""
    out = subprocess.run(
        [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityFile=/dev/null",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "ConnectTimeout=10",
            f"root@{lab.hosts['db1'].address}",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 255
    assert "Permission denied" in out.stderr


def test_the_lab_has_exactly_one_container_per_host(lab: Lab) -> None:
    """Re-running make lab converges: no duplicate or stray hosts."""
    out = subprocess.run(
        [
            "docker",
            "ps",
            "-a",
            "--filter",
            f"label=org.zapora.lab={lab.name}",
            "--format",
            "{{.Names}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sorted(out) == sorted(lab.container(h) for h in lab.hosts)


def _container_ids(lab: Lab) -> dict[str, str]:
    return {h: str(docker_inspect(lab.container(h))["Id"]) for h in lab.hosts}


def test_make_lab_up_on_the_running_lab_keeps_every_host(lab: Lab) -> None:
    """`make lab-up` (docs/lab.md) on a running lab converges it: the same containers."""
    before = _container_ids(lab)
    result = run_make("lab-up")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert _container_ids(lab) == before, "make lab-up replaced running lab hosts"


def test_make_lab_status_lists_every_host_and_url(lab: Lab) -> None:
    result = run_make("lab-status", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    for host in lab.hosts.values():
        assert re.search(rf"\b{host.name}\s+{re.escape(host.address)}\s+Up\b", result.stdout), (
            f"{host.name} is not listed as up: {result.stdout[-2000:]}"
        )
    # Every URL the inventory names, with what answers there now.
    assert "https://127.0.0.1:8443/" in result.stdout
    assert re.search(r"https://127\.0\.0\.1:8443/\s+answers \(\d{3}\)", result.stdout), (
        result.stdout[-2000:]
    )


@pytest.mark.lab(shared=("data",), exclusive=("app",))  # its deploy.yml takes the deploy lock
def test_a_second_make_lab_converges_nothing_and_deploys_nothing(lab: Lab) -> None:
    """`make lab` again on an unchanged checkout: same hosts, site.yml not needed (the stamp
    of scripts/lab-converge.sh), the release already active. (Its time is in docs/lab.md;
    `make test-e2e-full` runs `make lab LAB_CONVERGE=1`, the full second converge.)"""
    before = _container_ids(lab)
    result = run_make("lab", timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert ">> site.yml: not run: these lab hosts were converged from the same" in out, out[-3000:]
    assert re.search(r"Release \S+ is already active \(\w+\): nothing to deploy", out), out[-3000:]
    assert _container_ids(lab) == before
