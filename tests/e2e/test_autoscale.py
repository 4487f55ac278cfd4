"""The API replicas follow load (docs/scaling.md): the autoscaler on each app host adds
replicas of the active colour when their CPU use passes the 70 % target, the edge sends
traffic to the new ones, and after the load stops and the stabilisation window passes
(60 s in the lab, app_autoscale_scale_down_window_seconds) they drain and go, with no
client request failing throughout.

The load is wrk on edge1 logging one customer in over and over (bcrypt: CPU-heavy)
through the edge's TLS, WAF and upstreams (tests/e2e/edge_load.py); beside it the
shared order writer posts orders from the controller and counts every failure.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.conftest import Lab, app_state
from tests.e2e.edge_load import EdgeLoad, load_customer
from tests.e2e.order_writer import OrderWriter

pytestmark = pytest.mark.e2e

SCALE_UP_LIMIT_S = 60
LOAD_CAP_S = 90
SCALE_DOWN_LIMIT_S = 240


def replicas(lab: Lab, host: str, colour: str) -> list[dict[str, str]]:
    """The running API replicas of `colour` on `host`: name, service and host port."""
    fmt = '{{.Names}} {{.Label "com.docker.compose.service"}} {{.Ports}}'
    out = lab.ssh(
        host,
        f"docker ps --filter label=com.docker.compose.project=zapora-{colour} --format '{fmt}'",
    ).stdout
    found = []
    for line in out.splitlines():
        name, service, *ports = [*line.split(" ", 2), ""]
        if service in ("api", "api-extra"):
            found.append({"name": name, "service": service, "ports": " ".join(ports)})
    return found


def counts(lab: Lab, colour: str) -> dict[str, int]:
    return {h: len(replicas(lab, h, colour)) for h in lab.groups["app"]}


def decisions(lab: Lab, host: str, since: str) -> list[dict[str, object]]:
    out = lab.ssh(
        host, f"journalctl -u zapora-autoscaler --since '{since}' -o cat --no-pager"
    ).stdout
    lines = []
    for line in out.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def extra_requests(lab: Lab, host: str, colour: str) -> int:
    """Requests the extra replicas of `colour` on `host` served (their own counters)."""
    port = {"blue": 9331, "green": 9341}[colour]
    total = 0
    for p in range(port, port + 9):
        # The app hosts have python3, not curl.
        url = f"http://127.0.0.1:{p}/metrics"
        fetch = f"import urllib.request as u; print(u.urlopen('{url}', timeout=3).read().decode())"
        out = lab.ssh(host, f'python3 -c "{fetch}" 2>/dev/null || true').stdout
        for line in out.splitlines():
            if line.startswith("zapora_http_requests_total{") and "/auth/login" in line:
                total += int(float(line.rsplit(" ", 1)[1]))
    return total


@pytest.mark.lab(exclusive=("app",))
def test_replicas_follow_cpu_load_with_no_failed_request(lab: Lab) -> None:
    # About 4 min: load until every app host scaled up (<= 60 s), then the lab's 60 s
    # stabilisation window, the 30 s drain and the stop.
    host0 = lab.groups["app"][0]
    colour = str(app_state(lab, host0)["active"])
    # A scale-down still under way (an earlier load) ends within the drain and the stop.
    deadline = time.monotonic() + 120
    while any(n != 1 for n in counts(lab, colour).values()) and time.monotonic() < deadline:
        time.sleep(5)
    baseline = counts(lab, colour)
    assert all(n == 1 for n in baseline.values()), (
        f"each app host should start at app_replicas_min (1) replicas: {baseline}"
    )
    since = lab.ssh(host0, "date -u '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    customer = load_customer()

    with OrderWriter(limit_s=LOAD_CAP_S + SCALE_DOWN_LIMIT_S + 60) as writer:
        load = EdgeLoad(lab, seconds=LOAD_CAP_S, connections=6, login=customer).start()
        started = time.monotonic()
        scaled_at: dict[str, float] = {}
        while time.monotonic() - started < LOAD_CAP_S - 5 and len(scaled_at) < len(baseline):
            for host, n in counts(lab, colour).items():
                if n > baseline[host] and host not in scaled_at:
                    scaled_at[host] = time.monotonic() - started
            time.sleep(3)
        print(f"scaled up after (s, from the load's start): {scaled_at}")
        # The load runs its bounded course (wrk -d); the new replicas take traffic.
        result = load.wait()
        peak = counts(lab, colour)
        served_by_extra = {h: extra_requests(lab, h, colour) for h in lab.groups["app"]}
        print(f"load: {result.requests} logins, {result.rps:.1f}/s, p99 {result.p99_ms:.0f} ms, "
              f"{result.failed} failed; replicas at its end {peak}; "
              f"logins served by extra replicas {served_by_extra}")  # fmt: skip
        stopped = time.monotonic()
        down_at = None
        while time.monotonic() - stopped < SCALE_DOWN_LIMIT_S:
            if counts(lab, colour) == baseline:
                down_at = time.monotonic() - stopped
                break
            time.sleep(5)
        print(f"back to {baseline} {down_at} s after the load stopped")

    print(writer.summary())
    assert scaled_at, "no app host added a replica under the load"
    assert min(scaled_at.values()) <= SCALE_UP_LIMIT_S, scaled_at
    assert max(peak.values()) >= 2, peak
    assert sum(served_by_extra.values()) > 0, "the edge sent nothing to the extra replicas"
    assert down_at is not None, f"replicas did not go back to {baseline}: {counts(lab, colour)}"
    # The window: no scale-down before the lab's 60 s have passed since the load stopped.
    assert down_at >= 60, down_at
    assert result.failed == 0, result.raw
    assert writer.failed == 0, writer.failures
    assert writer.served > 0
    assert not writer.missing(lab)

    # Every decision is logged with its inputs; the scale-up names the CPU that led to it.
    lines = decisions(lab, host0, since)
    ups = [d for d in lines if d.get("event") == "decision" and d.get("action") == "scale-up"]
    downs = [d for d in lines if d.get("event") == "scaled-down"]
    assert ups and downs, [d.get("action") or d.get("event") for d in lines][-40:]
    cpu = [p for p in ups[0]["proposals"] if p["metric"] == "cpu"]  # type: ignore[union-attr]
    assert cpu and cpu[0]["ratio"] > 1.1, ups[0]
    assert ups[0]["replicas"] and ups[0]["colour"] == colour, ups[0]
    # The metrics node exporter's textfile collector serves.
    prom = lab.ssh(host0, "cat /var/lib/prometheus/node-exporter/zapora_autoscaler.prom").stdout
    assert f'zapora_autoscaler_replicas_current{{colour="{colour}"}} 1' in prom, prom
    assert f'zapora_autoscaler_at_max{{colour="{colour}"}} 0' in prom, prom
