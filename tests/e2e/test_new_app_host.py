"""A host the lab did not have, `app3`, added to the app tier under load and removed again
(docs/operator-guide.md, "Add an app host" and "Remove an app host"; docs/lab.md, "A
seventh host").

The three tests run in this order, in the third process of scripts/e2e-suite.sh (after
the alert test), beside the rest of the suite:

1. The new host is made (lab-up.yml with an inventory that adds it) and converged alone
   (`site.yml --limit app3`): nothing any other host serves or lists changes, so both
   tiers are only shared and the other tests run on meanwhile.
2. The join and the removal, with the app tier held alone: the other hosts learn the new
   one (`site.yml` with the tiers' tags), `deploy.yml` of the active release starts the
   colour on it, the edge sends it requests; then `app-host-remove.yml` drains and stops
   it. A bounded load through the edge fails no request throughout.
3. The operator's last step, also when an earlier test failed: the host's container is
   gone and `site.yml` with the tiers' tags and the lab's own inventory leaves no firewall
   admitting its address.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import shutil
import subprocess
import time

import pytest
import yaml

from tests.e2e.conftest import INVENTORY, REPO, Lab, LabHost, run_documented, run_playbook
from tests.e2e.test_api_rollout import (
    FAST,
    Load,
    _colours_running,
    _edge_lists,
    active,
    assert_joined,
    remove_under_load,
)
from tests.e2e.test_tier_playbooks import inventory_without, timed, write_overlay

pytestmark = pytest.mark.e2e

NEW_HOST = "app3"
OVERLAY = REPO / ".cache" / f"inventory-with-{NEW_HOST}"
# The tiers whose hosts list the app hosts: the firewalls (the database, Redis and
# Sentinel hosts admit them), pg_hba, the edges' upstreams, Prometheus's targets.
JOIN_TAGS = "--tags firewall,postgresql,nginx,prometheus"


def grown(lab: Lab) -> Lab:
    """The lab with the new host in the `app` group (docs/lab.md: the next free address
    after the last app host), and its inventory written to OVERLAY: two levels under the
    repository like inventory/lab, whose group_vars it links."""
    last = lab.hosts[lab.groups["app"][-1]].address
    address = str(ipaddress.ip_address(last) + 1)
    taken = {h.address: h.name for h in lab.hosts.values()}
    assert address not in taken, f"{address} (for {NEW_HOST}) is {taken[address]}'s"
    data = yaml.safe_load((INVENTORY / "hosts.yml").read_text())
    data["all"]["hosts"][NEW_HOST] = {"ansible_host": address, "lab_docker_volume": True}
    data["all"]["children"]["app"]["hosts"][NEW_HOST] = None
    write_overlay(OVERLAY.name, data)
    return dataclasses.replace(
        lab,
        hosts={**lab.hosts, NEW_HOST: LabHost(NEW_HOST, address, ["app"])},
        groups={**lab.groups, "app": [*lab.groups["app"], NEW_HOST]},
    )


def _prometheus_targets(lab: Lab, api_only: bool = False) -> str:
    """The scrape targets Prometheus's configuration and file_sd name on the monitoring
    host, as one text (`api_only`: the API's and worker's, which deploys and
    app-host-remove.yml write)."""
    mon = lab.groups["monitoring"][0]
    files = "" if api_only else "/etc/prometheus/prometheus.yml"
    return lab.ssh(mon, f"cat {files} /etc/prometheus/file_sd/*").stdout


def _container_ids(lab: Lab) -> dict[str, str]:
    return {
        h: subprocess.run(
            ["docker", "inspect", "-f", "{{.Id}}", lab.container(h)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for h in lab.hosts
    }


@pytest.mark.lab(shared=("app", "data"))  # converges a host nothing else knows yet
def test_1_a_new_host_is_made_and_converged_alone(lab: Lab) -> None:
    more = grown(lab)
    before = _container_ids(lab)
    up = timed("lab-up.yml (app3)", lambda: run_documented("lab-up.yml", inventory=OVERLAY))
    assert up.returncode == 0, up.stdout[-3000:]
    # The lab's hosts were left as they were (not recreated: that would lose everything
    # site.yml put on them); only the new one was created.
    assert _container_ids(lab) == before
    alone = timed(
        "site.yml --limit app3",
        lambda: run_documented("site.yml", "--limit app3", inventory=OVERLAY, timeout=1800),
    )
    assert alone.returncode == 0, alone.stdout[-3000:]
    recap = [line for line in alone.stdout.splitlines() if " : ok=" in line]
    assert [line.split()[0] for line in recap] == [NEW_HOST], recap
    # Converged, not yet known: Docker and the autoscaler run, no colour yet, and no
    # other host lists it.
    more.ssh(NEW_HOST, "systemctl is-active docker zapora-autoscaler")
    assert _colours_running(more, NEW_HOST) == ""
    assert not _edge_lists(more, NEW_HOST), "the edge lists a host site.yml --limit did not join"
    assert more.hosts[NEW_HOST].address not in _prometheus_targets(lab)


@pytest.mark.lab(shared=("data",), exclusive=("app",))  # a deploy: switches colours
def test_2_the_new_host_joins_and_leaves_under_load(lab: Lab) -> None:
    more = grown(lab)
    ready = more.ssh(NEW_HOST, "systemctl is-active docker", check=False)
    assert ready.returncode == 0, f"{NEW_HOST} was not made and converged by test 1"
    before = active(lab)
    with Load() as adding:
        joined_tiers = timed(
            f"site.yml {JOIN_TAGS} (app3 joins)",
            lambda: run_documented(
                "site.yml",
                "--tags firewall,postgresql,nginx,prometheus",
                inventory=OVERLAY,
                timeout=1200,
            ),
        )
        assert joined_tiers.returncode == 0, joined_tiers.stdout[-3000:]
        assert _edge_lists(more, NEW_HOST), "the edge does not list the new host"
        joined = timed(
            "deploy.yml (app3 joins)",
            lambda: run_playbook("deploy.yml", *FAST, inventory=OVERLAY),
        )
        time.sleep(2)
    print(f"{NEW_HOST} added under load: {dict(adding.status)}")
    assert_joined(more, NEW_HOST, joined, adding, before)
    assert more.hosts[NEW_HOST].address in _prometheus_targets(lab)

    shrunk = inventory_without(NEW_HOST, groups=("app",), kept_in="app_removed", base=OVERLAY)
    remove_under_load(more, NEW_HOST, shrunk)
    # Its API and worker targets went with it; its node_exporter's goes with the next
    # step (test 3).
    assert more.hosts[NEW_HOST].address not in _prometheus_targets(lab, api_only=True)


@pytest.mark.lab(shared=("app", "data"))  # the host is out of every list but the firewalls'
def test_3_site_without_the_new_host_forgets_it(lab: Lab) -> None:
    address = grown(lab).hosts[NEW_HOST].address
    # The machine is decommissioned: its container and Docker volume go (what `make
    # lab-down` would remove with the rest: they carry the lab's label).
    container = lab.container(NEW_HOST)
    subprocess.run(["docker", "rm", "-f", "-v", container], capture_output=True, check=False)
    subprocess.run(
        ["docker", "volume", "rm", "-f", f"{container}-docker"], capture_output=True, check=False
    )
    shutil.rmtree(OVERLAY, ignore_errors=True)
    with Load() as load:
        forgot = timed(
            f"site.yml {JOIN_TAGS} (without app3)",
            lambda: run_documented(
                "site.yml", "--tags firewall,postgresql,nginx,prometheus", timeout=1200
            ),
        )
    assert forgot.returncode == 0, forgot.stdout[-3000:]
    assert load.failed == 0, f"clients saw failures: {dict(load.status)}"
    for host in sorted(set(lab.groups["postgres"] + lab.groups["redis"] + lab.groups["edge"])):
        ruleset = lab.ssh(host, "nft list ruleset").stdout
        assert f"{address}" not in ruleset, f"{host}'s firewall still admits {address}"
    conf = lab.ssh(lab.groups["edge"][0], "cat /etc/nginx/zapora/upstreams.conf").stdout
    assert f" {address}:" not in conf, conf
    assert address not in _prometheus_targets(lab)
