"""Fixtures for the end-to-end suite: the running lab, read from its inventory.

The lab is brought up by `make lab` (make test-e2e does it first). These tests do not
start or skip around it: when the lab is down they fail and say how to start it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.documented import Shape, require_documented

REPO = Path(__file__).resolve().parents[2]
INVENTORY = REPO / "inventory" / "lab"
LAB_KEY = REPO / ".lab" / "id_ed25519"


@dataclass(frozen=True)
class LabHost:
    name: str
    address: str
    groups: list[str]
    ports: list[str] = field(default_factory=list)


@dataclass
class Lab:
    name: str
    subnet: str
    gateway: str
    hosts: dict[str, LabHost]
    groups: dict[str, list[str]]

    def container(self, host: str) -> str:
        return f"{self.name}-{host}"

    def ssh(
        self,
        host: str,
        command: str,
        check: bool = True,
        timeout: int = 60,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `command` as root on a lab host over SSH with the lab key, as Ansible does
        (`stdin`: what the command reads, e.g. a secret that must not be in its arguments)."""
        address = self.hosts[host].address
        result = subprocess.run(
            [
                "ssh",
                "-i",
                str(LAB_KEY),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=10",
                f"root@{address}",
                command,
            ],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"ssh {host} ({address}) {command!r} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result


def on_every(lab: Lab, hosts: list[str], command: str) -> None:
    """`command` on every host at once (an outage starts and ends on all of them together,
    not one after another)."""
    with ThreadPoolExecutor(len(hosts)) as pool:
        for done in [pool.submit(lab.ssh, h, command) for h in hosts]:
            done.result()


# The exporters serve HTTPS only (TLS 1.3, internal-CA certificates): fetched on the
# monitoring host the way Prometheus scrapes them, verified against the CA it holds.
SCRAPE_PROBE = r"""
import json, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile="/etc/prometheus/internal-ca.crt")
ctx.load_cert_chain("/etc/prometheus/tls/prometheus.crt", "/etc/prometheus/tls/prometheus.key")
print(json.dumps({u: urllib.request.urlopen(u, timeout=10, context=ctx).read().decode()
                  for u in sys.argv[1:]}))
"""


def scrape(lab: Lab, *urls: str) -> dict[str, str]:
    """Each URL's body as the monitoring host's Prometheus gets it (its CA, its client
    certificate); a refused or unverified TLS connection fails the call."""
    host = lab.groups["monitoring"][0]
    args = " ".join(shlex.quote(u) for u in urls)
    out = lab.ssh(host, f"python3 -c {shlex.quote(SCRAPE_PROBE)} {args}", timeout=90).stdout
    bodies: dict[str, str] = json.loads(out)
    return bodies


def venv_tool(name: str) -> str:
    """An Ansible command from the venv, also when pytest runs without .venv/bin on PATH."""
    beside = Path(sys.executable).parent / name
    tool = str(beside) if beside.exists() else shutil.which(name)
    assert tool, f"{name} not found: run `make setup` (it creates .venv)"
    return tool


def lab_group_vars(name: str) -> dict[str, Any]:
    """The lab's inventory/lab/group_vars/all/<name>.yml as written (plain values only)."""
    return dict(yaml.safe_load((INVENTORY / "group_vars" / "all" / f"{name}.yml").read_text()))


def _inventory() -> dict[str, object]:
    tool = venv_tool("ansible-inventory")
    out = subprocess.run(
        [tool, "-i", str(INVENTORY), "--list"], capture_output=True, text=True, check=True
    )
    data: dict[str, object] = json.loads(out.stdout)
    return data


@pytest.fixture(scope="session")
def lab() -> Lab:
    return load_lab()


def load_lab() -> Lab:
    """The lab's hosts and groups from inventory/lab, asserting the lab is up (the `lab`
    fixture; benches under bench/ call it directly)."""
    inv = _inventory()
    hostvars: dict[str, dict[str, object]] = inv["_meta"]["hostvars"]  # type: ignore[index]
    groups: dict[str, list[str]] = {}
    for group, body in inv.items():
        if group in ("_meta", "all") or not isinstance(body, dict):
            continue
        groups[group] = list(body.get("hosts", []))
    hosts = {
        name: LabHost(
            name=name,
            address=str(hv["ansible_host"]),
            groups=sorted(g for g, members in groups.items() if name in members),
            ports=[str(p) for p in hv.get("lab_ports", [])],  # type: ignore[attr-defined]
        )
        for name, hv in hostvars.items()
    }
    any_vars = next(iter(hostvars.values()))
    result = Lab(
        name=str(any_vars["lab_name"]),
        subnet=str(any_vars["lab_network_subnet"]),
        gateway=str(any_vars["lab_network_gateway"]),
        hosts=hosts,
        groups=groups,
    )
    assert LAB_KEY.exists(), f"{LAB_KEY} is missing: the lab is not up. Run `make lab` first."
    # After `make lab-down` the key stays but the hosts are gone: say so, instead of
    # letting every test fail on an SSH timeout.
    down = [
        name
        for name in hosts
        if subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}}", result.container(name)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        != "true"
    ]
    assert not down, (
        f"the lab is down: {', '.join(result.container(n) for n in down)} not running. "
        "Run `make lab` first."
    )
    return result


OUTAGE_LOCK = REPO / ".cache" / "e2e-node-exporter-outage.lock"


@contextmanager
def node_exporter_outage(exclusive: bool) -> Iterator[None]:
    """The alert test stops a node_exporter while `make test-e2e-suite` runs the other
    tests in a second pytest process (scripts/e2e-suite.sh). It holds this lock
    exclusively for the outage; a test that needs every target up holds it shared."""
    OUTAGE_LOCK.parent.mkdir(exist_ok=True)
    with OUTAGE_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# `make test-e2e-suite` runs the app tier's and the data tier's files in two pytest
# processes side by side (scripts/e2e-suite.sh). What keeps them from spoiling each
# other: every test holds a lock per tier it relies on, shared by default, exclusive
# where it disturbs that tier (a deploy switches the app tier's colour and loads the
# edge; a failover takes the data tier's primary away). Declare it with
# `@pytest.mark.lab(shared=("data",), exclusive=("app",))`; no marker = both shared.
# A waiting exclusive holder goes before new shared ones (the turnstile), and tiers
# are always taken in the same order, so no two tests wait on each other.
TIERS = ("app", "data")
LOCK_DIR = REPO / ".cache" / "e2e-locks"


@contextmanager
def _tier_lock(tier: str, exclusive: bool) -> Iterator[None]:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    with (
        (LOCK_DIR / f"{tier}.turnstile").open("a") as turnstile,
        (LOCK_DIR / f"{tier}.lock").open("a") as lock,
    ):
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def lab_tiers(request: pytest.FixtureRequest) -> Iterator[None]:
    marker = request.node.get_closest_marker("lab")
    shared = set(marker.kwargs.get("shared", ())) if marker else set(TIERS)
    exclusive = set(marker.kwargs.get("exclusive", ())) if marker else set()
    assert (shared | exclusive) <= set(TIERS), f"unknown tier in {marker}"
    started = time.monotonic()
    with contextlib.ExitStack() as held:
        for tier in TIERS:
            if tier in exclusive or tier in shared:
                held.enter_context(_tier_lock(tier, tier in exclusive))
        waited = time.monotonic() - started
        if waited > 5:
            print(f"waited {waited:.0f} s for the lab's {sorted(shared | exclusive)} tier(s)")
        yield
        if "data" in exclusive:
            # A test that took the data tier away hands it back healthy: the API ready
            # again through the edge (its pools on the new primary), before a test of the
            # other process that relies on it may start.
            _wait_until_ready(request.node.nodeid, DATA_HANDBACK_S)


DATA_HANDBACK_S = 120


def _wait_until_ready(after: str, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    last = "no answer"
    with api_client() as c:
        while True:
            try:
                r = c.get("/health/ready")
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:300]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                pytest.fail(f"the API was not ready {limit_s:.0f} s after {after}: {last}")
            time.sleep(2)


API_URL = "https://127.0.0.1:8443"
SECRETS = REPO / ".lab" / "secrets"
# The lab edge's certificate is signed by this CA (nginx role, tls_internal_ca).
EDGE_CA = SECRETS / "edge-ca" / "ca.crt"


def edge_tls() -> ssl.SSLContext:
    """TLS settings that verify the lab edge's certificate (its SANs include 127.0.0.1)."""
    assert EDGE_CA.exists(), f"{EDGE_CA} is missing: the edge has not run (run `make lab`)"
    return ssl.create_default_context(cafile=str(EDGE_CA))


# Prometheus and Alertmanager on mon1, published on the controller's loopback by the lab.
# They serve HTTPS only (TLS 1.3) with internal-CA certificates that name 127.0.0.1; the
# controller verifies them with the CA's copy the internal_ca role keeps beside the
# inventory (internal_ca_backup_dir in inventory/lab).
PROMETHEUS_URL = "https://127.0.0.1:9090"
ALERTMANAGER_URL = "https://127.0.0.1:9093"
INTERNAL_CA = SECRETS / "internal-ca" / "ca.crt"


def internal_tls() -> ssl.SSLContext:
    """TLS settings that verify Prometheus's and Alertmanager's certificates from the
    controller (the internal CA; TLS 1.3, what they accept)."""
    assert INTERNAL_CA.exists(), (
        f"{INTERNAL_CA} is missing: the database tier has not run (run `make lab`)"
    )
    return ssl.create_default_context(cafile=str(INTERNAL_CA))


def run_playbook(
    name: str, *extra_vars: str, timeout: int = 900, inventory: Path = INVENTORY
) -> subprocess.CompletedProcess[str]:
    """Run playbooks/<name> against the lab (or an overlay of its inventory) with
    test-only settings (the deploy tests' short watch and drain, a derived release). A
    test of a command operators run uses run_documented instead. Never raises: callers
    check rc and output."""
    args = [venv_tool("ansible-playbook"), "-i", str(inventory), str(REPO / "playbooks" / name)]
    for var in extra_vars:
        args += ["-e", var]
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO
    )


def run_documented(
    name: str,
    *flags: str,
    timeout: int = 900,
    inventory: Path = INVENTORY,
    **extra_vars: object,
) -> subprocess.CompletedProcess[str]:
    """Run playbooks/<name> against the lab the way the docs show it: the flags and the
    names of the `-e` variables must be a form README.md or docs/ show (tests/documented.py);
    the values are the test's. `inventory` is the `-i` path, the operator's own inventory
    in every documented command (an overlay of the lab's for a step such as "take the host
    out of the group"), so it is not part of the shape. Never raises: callers check rc and
    output."""
    require_documented(Shape("playbook", name, tuple(sorted(flags)), frozenset(extra_vars)))
    args = [venv_tool("ansible-playbook"), "-i", str(inventory), str(REPO / "playbooks" / name)]
    for flag in flags:
        args += flag.split()
    for var, value in extra_vars.items():
        args += ["-e", f"{var}={value}" if isinstance(value, str) else json.dumps({var: value})]
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO
    )


def app_state(lab: Lab, host: str) -> dict[str, object]:
    """The deploy state of one app host (active colour, release of each colour)."""
    out = lab.ssh(host, "cat /var/lib/zapora/rollout/state.json").stdout
    state: dict[str, object] = json.loads(out)
    return state


def lab_secret(name: str) -> str:
    path = SECRETS / name
    assert path.exists(), f"{path} is missing: the lab has not generated it (run `make lab`)"
    return path.read_text().strip()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked fresh_lab first (stable: the rest keep their order): they need the
    lab as `make lab` left it, before a failover or an outage test leaves its alerts."""
    items.sort(key=lambda item: item.get_closest_marker("fresh_lab") is None)


def pytest_deselected(items: list[pytest.Item]) -> None:
    """Slow tests left out by `-m "not slow"` (make test) are listed in the summary."""
    from tests.not_run import record

    for item in items:
        slow = item.get_closest_marker("slow")
        if slow:
            what = slow.kwargs.get("reason", "a whole site.yml run (about 8 min)")
            record(
                f"e2e {item.nodeid}",
                f"{what}; `make test` keeps CI within its time budget, "
                "`make test-e2e-full` runs it",
            )


def api_client() -> httpx.Client:
    """A client for the API through the edge (https://127.0.0.1:8443, the lab's CA)."""
    return httpx.Client(base_url=API_URL, verify=edge_tls(), timeout=10)


def api_login(c: httpx.Client, email: str, password: str) -> dict[str, str]:
    r = c.post("/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def new_menu_item(
    c: httpx.Client, label: str, name: str = "Barszcz", price_minor: int = 900
) -> dict[str, Any]:
    """A new menu with one available item, made as the lab's admin; the item as created."""
    admin = api_login(c, "admin@zapora.example.com", lab_secret("app_admin_password"))
    menu = c.post("/menus", json={"name": f"{label} {uuid.uuid4().hex[:6]}"}, headers=admin)
    assert menu.status_code == 201, menu.text
    item = c.post(
        "/menu-items",
        json={
            "menu_id": menu.json()["id"],
            "name": name,
            "price_minor": price_minor,
            "currency": "PLN",
        },
        headers=admin,
    )
    assert item.status_code == 201, item.text
    return dict(item.json())


def new_customer(c: httpx.Client, label: str) -> dict[str, str]:
    """A newly registered customer's bearer header."""
    email = f"{label}-{uuid.uuid4().hex[:8]}@zapora.example.com"
    password = f"{label} customer password"
    r = c.post("/auth/register", json={"email": email, "password": password, "full_name": "E2E"})
    assert r.status_code == 201, r.text
    return api_login(c, email, password)


def order_journey(lab: Lab) -> None:
    """Register, login, menu, order through the edge; the worker records the order's event."""
    with api_client() as c:
        item = new_menu_item(c, "e2e", "Pierogi", 1250)
        item_id = item["id"]
        customer = new_customer(c, "e2e")
        listed = c.get("/menu-items", params={"menu_id": item["menu_id"]})
        assert listed.status_code == 200, listed.text
        assert item_id in [i["id"] for i in listed.json()["items"]]
        order = c.post(
            "/orders",
            json={"items": [{"menu_item_id": item_id, "quantity": 2}]},
            headers={**customer, "Idempotency-Key": uuid.uuid4().hex},
        )
        assert order.status_code == 201, order.text
        assert order.json()["total_minor"] == 2500
    order_id = order.json()["id"]
    # The worker records the order's event from the Redis stream into order_events.
    query = f"SELECT count(*) FROM order_events WHERE order_id = '{order_id}'"
    deadline = time.monotonic() + 30
    seen = "0"
    while time.monotonic() < deadline and seen == "0":
        for db in lab.groups["postgres"]:
            out = lab.ssh(db, f'runuser -u postgres -- psql -d zapora -tAc "{query}"', check=False)
            seen = out.stdout.strip() or seen
            if seen not in ("", "0"):
                break
        time.sleep(1)
    assert seen not in ("", "0"), f"the worker did not process order {order_id} in 30 s"
