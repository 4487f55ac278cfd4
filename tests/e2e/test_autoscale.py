"""The API's replicas follow load on the lab (docs/operator-guide.md "Autoscaling"), through
the edge, with no failed request.

The lab runs the autoscaler (inventory/lab/group_vars/all/app.yml: one to two api replicas
of the active colour per app host, half a CPU each, a decision every 5 s, a 30 s scale-down
window). The test:

1. exempts the controller from the edge's rate limits for its run (`edge.yml` with
   `nginx_rate_limit_exempt_networks`, as docs/edge.md says load tests do) and waits until
   every app host runs one replica;
2. sends a CPU load through the edge: LOAD_CLIENTS clients logging in back to back (each
   login is a bcrypt hash: CPU inside the api container), beside a customer posting an order
   every PACE_S s;
3. asserts that every app host runs two replicas of the active colour within SCALE_UP_S
   (60 s, issue 22) of the load's start, the autoscaler's journal shows the `up` decision
   with its inputs, and its metrics file says current 2, desired >= 2;
4. stops the load and asserts that every host goes back to one replica: not before the
   window has passed since the load stopped (less one decision interval: the last high
   sample can be that old), and within SCALE_DOWN_S;
5. asserts that no request failed: every login 200, every order 201 and in the database.

The edge's limits are put back in every case. The lab's tiers: `app` exclusive (the edge's
settings change, and other app tests count containers), `data` shared.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.e2e.conftest import Lab, api_client, app_state, run_playbook
from tests.e2e.order_writer import OrderWriter

pytestmark = [pytest.mark.e2e, pytest.mark.lab(shared=("data",), exclusive=("app",))]

EXEMPT = '{"nginx_rate_limit_exempt_networks": ["{{ lab_network_gateway }}/32"]}'
# The lab's settings (inventory/lab/group_vars/all/app.yml), read back from each host's unit
# below; these are what the test's bounds are made of.
LOAD_CLIENTS = 3
SCALE_UP_S = 60
# Window (30) + interval (5) + drain (10) + gunicorn's stop (a few s) + slack for a busy CI.
SCALE_DOWN_S = 120
TEXTFILE = "/var/lib/prometheus/node-exporter/zapora_autoscaler.prom"


def unit_setting(lab: Lab, host: str, flag: str) -> float:
    """A flag of the autoscaler's unit on `host` (what the role rendered from the inventory)."""
    unit = lab.ssh(host, "systemctl cat zapora-autoscaler").stdout
    found = re.search(rf"--{flag} (\S+)", unit)
    assert found, f"--{flag} not in {host}'s zapora-autoscaler unit:\n{unit}"
    return float(found.group(1))


def replicas(lab: Lab, host: str) -> int:
    """Running api replicas of the active colour on `host` (Compose services api, api-2, ...)."""
    colour = app_state(lab, host)["active"]
    out = lab.ssh(
        host,
        "docker ps --filter label=com.docker.compose.project=zapora-"
        f"{colour} --format '{{{{.Label \"com.docker.compose.service\"}}}}'",
    ).stdout.split()
    return sum(1 for service in out if re.fullmatch(r"api(-\d+)?", service))


def metrics(lab: Lab, host: str) -> dict[str, float]:
    """The autoscaler's textfile metrics on `host`, by name (the active colour's series)."""
    colour = app_state(lab, host)["active"]
    values: dict[str, float] = {}
    for line in lab.ssh(host, f"cat {TEXTFILE}").stdout.splitlines():
        found = re.match(r'(zapora_autoscaler_\w+)(?:\{colour="(\w+)"\})? (\S+)$', line)
        if found and found.group(2) in (None, colour):
            values[found.group(1)] = float(found.group(3))
    return values


def wait_replicas(lab: Lab, hosts: list[str], want: int, limit_s: float) -> dict[str, float]:
    """Seconds until each host ran `want` replicas (polled every second); fails past limit_s."""
    started = time.monotonic()
    reached: dict[str, float] = {}
    seen: dict[str, int] = {}
    while len(reached) < len(hosts):
        for host in hosts:
            if host not in reached:
                seen[host] = replicas(lab, host)
                if seen[host] == want:
                    reached[host] = time.monotonic() - started
        if len(reached) < len(hosts):
            assert time.monotonic() - started < limit_s, (
                f"not every app host ran {want} replicas within {limit_s:.0f} s: "
                f"reached {reached}, now {seen}"
            )
            time.sleep(1)
    return reached


class Logins:
    """LOAD_CLIENTS clients logging in back to back through the edge (bcrypt: CPU)."""

    def __init__(self, email: str, password: str) -> None:
        self.body = {"email": email, "password": password}
        self.status: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(LOAD_CLIENTS)
        ]

    def _run(self) -> None:
        with api_client() as c:
            c.timeout = httpx.Timeout(30)
            while not self._stop.is_set():
                sent = time.strftime("%H:%M:%S")
                try:
                    r = c.post("/auth/login", json=self.body)
                    self.status[str(r.status_code)] += 1
                    if r.status_code != 200:
                        self.failures.append(f"{sent} {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.status[type(exc).__name__] += 1
                    self.failures.append(f"{sent} {exc!r}")

    def __enter__(self) -> Logins:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def test_replicas_follow_a_cpu_load_through_the_edge_with_no_failed_request(lab: Lab) -> None:
    hosts = lab.groups["app"]
    for host in hosts:
        active = lab.ssh(host, "systemctl is-active zapora-autoscaler", check=False).stdout
        assert active.strip() == "active", f"the autoscaler is not running on {host}: {active}"
    window = unit_setting(lab, hosts[0], "scale-down-window")
    interval = unit_setting(lab, hosts[0], "interval")
    assert unit_setting(lab, hosts[0], "max") == 2, "the lab runs at most two replicas per host"
    # A load user of its own (its logins are the load).
    email, password = f"e2e-load-{time.time_ns()}@zapora.example.com", "e2e load password"
    with api_client() as c:
        r = c.post("/auth/register", json={"email": email, "password": password, "full_name": "L"})
        assert r.status_code == 201, r.text
    exempt = run_playbook("edge.yml", EXEMPT)
    try:
        assert exempt.returncode == 0, exempt.stdout[-3000:] + exempt.stderr[-2000:]
        # An earlier test's traffic may have scaled a host up: from one replica each.
        wait_replicas(lab, hosts, 1, window + SCALE_DOWN_S)
        since = lab.ssh(hosts[0], "date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
        with OrderWriter(limit_s=SCALE_UP_S + SCALE_DOWN_S + window + 120) as writer:
            with Logins(email, password) as load:
                up = wait_replicas(lab, hosts, 2, SCALE_UP_S)
                print(f"scale-up: two replicas on {up} s after the load started")
                # Some load at two replicas (the edge sends to both slots), and the
                # metrics file is written after the new replica answered ready.
                time.sleep(10)
                at_two = {host: metrics(lab, host) for host in hosts}
            stopped = time.monotonic()
            print(f"load: {sum(load.status.values())} logins {dict(load.status)}")
            down = wait_replicas(lab, hosts, 1, window + SCALE_DOWN_S)
            print(f"scale-down: one replica on {down} s after the load stopped")
            slowest = time.monotonic() - stopped
        print(f"orders: {writer.summary()}")
    finally:
        back = run_playbook("edge.yml")
    assert back.returncode == 0, back.stdout[-3000:] + back.stderr[-2000:]

    for host, values in at_two.items():
        assert values.get("zapora_autoscaler_replicas_current") == 2, (host, values)
        assert values.get("zapora_autoscaler_replicas_desired", 0) >= 2, (host, values)
    for host in hosts:
        journal = lab.ssh(
            host, f"journalctl -u zapora-autoscaler --since '{since}' -o cat --no-pager"
        ).stdout
        decisions = [json.loads(line) for line in journal.splitlines() if line.startswith("{")]
        ups = [
            d for d in decisions if d.get("event") == "decision" and d["reason"].startswith("up")
        ]
        assert ups, f"no `up` decision in {host}'s journal since {since}:\n{journal[-3000:]}"
        first = ups[0]
        assert first["current"] == 1 and first["desired"] == 2, first
        # Its inputs: the replica's CPU use over the 70 % target drove it.
        assert first["usage"] and first["usage"][0]["cpu"] > first["targets"]["cpu"], first
        print(f"{host}: first up decision {ups[0]}")
        events = {d.get("event") for d in decisions}
        assert {"draining", "stopped"} <= events, (host, sorted(map(str, events)))
    # Not before the window: the last high recommendation may be one interval older than
    # the load's end.
    assert min(down.values()) >= window - interval, (down, window, interval)
    assert slowest <= window + SCALE_DOWN_S
    assert load.failures == [], load.failures[:20]
    assert load.status["200"] > 0, load.status
    assert writer.failed == 0, (writer.summary(), writer.failures[:20])
    assert writer.served > 0, writer.summary()
    assert writer.missing(lab) == [], "acknowledged orders missing from the database"
