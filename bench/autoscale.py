"""`make bench-autoscale`: a stepped load through the lab's edge while the autoscaler runs.

The lab must be up with the API deployed and the autoscaler on (`make lab`: the lab's
inventory turns it on, one to two replicas per app host, docs/operator-guide.md
"Autoscaling"). The load is logins (POST /auth/login): each is a bcrypt hash, CPU inside
the api container, so a few clients are enough to push a replica past its CPU target
without the client or the edge being the bottleneck. Three steps:

- low: BENCH_LOW_CLIENTS clients, one login each per BENCH_LOW_PAUSE s, for BENCH_LOW_S s;
- high: BENCH_HIGH_CLIENTS clients back to back until every app host has run its most
  replicas for BENCH_HIGH_AFTER_S s (at most BENCH_HIGH_LIMIT_S);
- low again until every host is back at one replica (at most BENCH_LOW_LIMIT_S).

It prints the replicas on each app host every BENCH_SAMPLE_S s, the time from the high
step's start to each host's scale-up, req/s and p99 latency of the high step before the
first scale-up and after every host has scaled, the capacity gained per added replica
(req/s after / req/s before, per replica added), the time to scale down, and failed
requests (any answer but 200, transport errors; goal 0).

For the run, `playbooks/edge.yml` exempts the controller (the lab's gateway) from the
edge's rate limits (docs/edge.md), and the inventory's limits are put back at the end,
whatever happened. All traffic goes to the lab's edge on loopback; every step is bounded.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import Lab, api_client, load_lab, run_playbook  # noqa: E402
from tests.e2e.test_autoscale import EXEMPT, replicas, unit_setting  # noqa: E402

LOW_CLIENTS = int(os.environ.get("BENCH_LOW_CLIENTS", "1"))
LOW_PAUSE = float(os.environ.get("BENCH_LOW_PAUSE", "1.0"))
LOW_S = float(os.environ.get("BENCH_LOW_S", "30"))
HIGH_CLIENTS = int(os.environ.get("BENCH_HIGH_CLIENTS", "4"))
HIGH_AFTER_S = float(os.environ.get("BENCH_HIGH_AFTER_S", "30"))
HIGH_LIMIT_S = float(os.environ.get("BENCH_HIGH_LIMIT_S", "180"))
LOW_LIMIT_S = float(os.environ.get("BENCH_LOW_LIMIT_S", "300"))
SAMPLE_S = float(os.environ.get("BENCH_SAMPLE_S", "2"))


class Clients:
    """`n` clients logging in through the edge; each pauses `pause` s between logins."""

    def __init__(self, n: int, pause: float, body: dict[str, str]) -> None:
        self.pause = pause
        self.body = body
        # (time sent, seconds, status or exception name)
        self.samples: list[tuple[float, float, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        with api_client() as c:
            c.timeout = httpx.Timeout(30)
            while not self._stop.is_set():
                sent = time.time()
                try:
                    status = str(c.post("/auth/login", json=self.body).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.samples.append((sent, time.time() - sent, status))
                self._stop.wait(self.pause)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def p99(durations: list[float]) -> float:
    if len(durations) < 2:
        return durations[0] if durations else 0.0
    return statistics.quantiles(durations, n=100)[98]


def rate(samples: list[tuple[float, float, str]], start: float, end: float) -> tuple[float, float]:
    """req/s (answered 200, sent in [start, end)) and their p99 in ms."""
    ok = [d for t, d, s in samples if start <= t < end and s == "200"]
    return len(ok) / max(end - start, 1e-9), p99(ok) * 1000


def main() -> int:
    lab = load_lab()
    hosts = lab.groups["app"]
    most = int(unit_setting(lab, hosts[0], "max"))
    window = unit_setting(lab, hosts[0], "scale-down-window")
    print(f"app hosts {hosts}: 1..{most} replicas each, scale-down window {window:.0f} s")
    email, password = f"bench-autoscale-{time.time_ns()}@zapora.example.com", "bench password"
    with api_client() as c:
        r = c.post("/auth/register", json={"email": email, "password": password, "full_name": "B"})
        if r.status_code != 201:
            raise SystemExit(f"registering the bench's user failed: {r.status_code} {r.text}")
    body = {"email": email, "password": password}
    print("rate limits: the controller is exempt for this run")
    if run_playbook("edge.yml", EXEMPT).returncode != 0:
        raise SystemExit("edge.yml (exempting the controller) failed")
    try:
        return bench(lab, hosts, most, body)
    finally:
        if run_playbook("edge.yml").returncode != 0:
            print("edge.yml (restoring the limits) FAILED: run it by hand")
        print("rate limits: back to the inventory's settings")


def bench(lab: Lab, hosts: list[str], most: int, body: dict[str, str]) -> int:
    started = time.time()
    timeline: list[tuple[float, dict[str, int]]] = []

    def sample() -> dict[str, int]:
        now = {host: replicas(lab, host) for host in hosts}
        timeline.append((time.time() - started, now))
        print(f"t={timeline[-1][0]:6.1f}s replicas {now}", flush=True)
        return now

    low = Clients(LOW_CLIENTS, LOW_PAUSE, body)
    print(f"low: {LOW_CLIENTS} client(s), a login per {LOW_PAUSE} s, for {LOW_S:.0f} s")
    end = time.time() + LOW_S
    while time.time() < end:
        if any(n != 1 for n in sample().values()):
            print("a host runs more than one replica at low load: waiting for it")
            end = max(end, time.time() + SAMPLE_S)
        time.sleep(SAMPLE_S)
    low_end = time.time()

    print(f"high: {HIGH_CLIENTS} clients back to back")
    high = Clients(HIGH_CLIENTS, 0.0, body)
    high_start = time.time()
    scaled: dict[str, float] = {}
    all_scaled = 0.0
    while time.time() - high_start < HIGH_LIMIT_S:
        now = sample()
        for host, n in now.items():
            if n > 1 and host not in scaled:
                scaled[host] = time.time() - high_start
        if all(n == most for n in now.values()):
            all_scaled = all_scaled or time.time()
            if time.time() - all_scaled >= HIGH_AFTER_S:
                break
        time.sleep(SAMPLE_S)
    high.stop()
    high_end = time.time()

    print("low again until every host runs one replica")
    back_at: float | None = None
    while time.time() - high_end < LOW_LIMIT_S:
        if all(n == 1 for n in sample().values()):
            back_at = time.time() - high_end
            break
        time.sleep(SAMPLE_S)
    low.stop()

    samples = low.samples + high.samples
    status = Counter(s for _, _, s in samples)
    failed = sum(n for k, n in status.items() if k != "200")
    print()
    print(f"requests: {len(samples)}  failed: {failed}  answers: {dict(status)}")
    print(f"low step: req/s {rate(low.samples, started, low_end)[0]:.2f}, p99 "
          f"{rate(low.samples, started, low_end)[1]:.0f} ms")  # fmt: skip
    for host in hosts:
        print(f"scale-up on {host}: " + (f"{scaled[host]:.0f} s" if host in scaled else "none"))
    if not scaled or not all_scaled:
        print(f"not every host scaled to {most} within {HIGH_LIMIT_S:.0f} s")
        return 1
    first = high_start + min(scaled.values())
    before = rate(high.samples, high_start, first)
    after = rate(high.samples, all_scaled, high_end)
    added = (most - 1) * len(hosts)
    print(f"high step, 1 replica per host (first {first - high_start:.0f} s): "
          f"{before[0]:.2f} req/s, p99 {before[1]:.0f} ms")  # fmt: skip
    print(f"high step, {most} per host ({high_end - all_scaled:.0f} s): "
          f"{after[0]:.2f} req/s, p99 {after[1]:.0f} ms")  # fmt: skip
    if before[0] > 0:
        ratio = after[0] / before[0]
        per_replica = (ratio - 1) / (most - 1)
        print(f"capacity: x{ratio:.2f} with {added} replicas added; each added replica per "
              f"host brings {per_replica:.2f} of the first one's req/s")  # fmt: skip
    down = f"{back_at:.0f} s after the high step" if back_at else "NOT within the limit"
    print(f"scale-down: {down}")
    return 1 if failed or back_at is None else 0


if __name__ == "__main__":
    raise SystemExit(main())
