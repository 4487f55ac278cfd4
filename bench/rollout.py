"""`make bench-rollout`: blue/green deploys under load, through the lab's edge.

The lab must be up with the API deployed (`make lab`). The bench drives bounded,
continuous load (BENCH_WORKERS clients, each at most one request per BENCH_PAUSE s) at
https://127.0.0.1:8443/menu-items while it runs BENCH_DEPLOYS deploys of the current release
(app_force=true, so each one starts the idle colour and switches to it: colours
alternate). It prints requests, failed requests (transport errors and 5xx; 429 from the
edge's rate limit counted apart), p99 latency during switches (±BENCH_SWITCH_WINDOW s
around each switch) versus steady state (a BENCH_STEADY s period before the first deploy),
and each deploy's time from "idle colour ready" to "all edges switched".

Then the edge's cost: wrk on the edge host, 10 s each, against the edge
(https://127.0.0.1/menu-items, TLS and all) and straight to the active colour on one app
host (HTTPS, as the edge reaches it; wrk does not verify certificates): the same cached
GET from the same place, so the ratio is the edge's share. req/s and p99 of each.
`--edge-only` (`make bench-edge`, about a minute) measures only that, without the deploys.

For the run, `playbooks/edge.yml` exempts the controller (the lab's gateway) and the edge's
loopback from the edge's rate limits (otherwise nearly every request is a 429 and the
edge-cost ratio measures the limiter); the inventory's limits are put back at the end,
whatever happened.

All traffic goes to loopback or inside the lab network; every part is bounded in time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import API_URL, _inventory, edge_tls, run_playbook  # noqa: E402

DEPLOYS = int(os.environ.get("BENCH_DEPLOYS", "20"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "4"))
PAUSE = float(os.environ.get("BENCH_PAUSE", "0.02"))
STEADY = float(os.environ.get("BENCH_STEADY", "20"))
SWITCH_WINDOW = float(os.environ.get("BENCH_SWITCH_WINDOW", "5"))
LIMIT_S = float(os.environ.get("BENCH_LIMIT_S", "3600"))
PATH = "/menu-items"
EDGE_HOST = "api.zapora.example"  # the lab's edge answers any name (nginx_server_name "")
DEPLOY_VARS = ("app_force=true", "app_watch_seconds=5", "app_drain_seconds=5")
EXEMPT = '{"nginx_rate_limit_exempt_networks": ["{{ lab_network_gateway }}/32", "127.0.0.1/32"]}'


class Load:
    def __init__(self) -> None:
        self.samples: list[tuple[float, float, str]] = []  # (start, seconds, status)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(WORKERS)]

    def _run(self) -> None:
        deadline = time.monotonic() + LIMIT_S
        with httpx.Client(base_url=API_URL, verify=edge_tls(), timeout=10) as c:
            while not self._stop.is_set() and time.monotonic() < deadline:
                start = time.time()
                t0 = time.perf_counter()
                try:
                    status = str(c.get(PATH).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with self._lock:
                    self.samples.append((start, time.perf_counter() - t0, status))
                time.sleep(PAUSE)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def ssh(address: str, command: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    key = REPO / ".lab" / "id_ed25519"
    return subprocess.run(
        ["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
         "-o", "LogLevel=ERROR", f"root@{address}", command],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


WRK_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk_rps(edge: str, url: str, host: str = "") -> tuple[float, float]:
    """req/s and p99 (ms) of 10 s of wrk on the edge host against url (with a Host header
    when `host` is given)."""
    header = f"-H 'Host: {host}' " if host else ""
    out = ssh(edge, f"wrk -t2 -c16 -d10s --latency {header}{url}", timeout=60)
    match = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m)\s*$", out.stdout, re.MULTILINE)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out.stdout)
    if not match or not p99:
        raise SystemExit(f"wrk failed on the edge host: {out.stdout}{out.stderr}")
    if non2xx:
        print(f"  note: {non2xx.group(1)} non-2xx answers from {url}")
    return float(match.group(1)), float(p99.group(1)) * WRK_UNITS_MS[p99.group(2)]


def edge_cost() -> None:
    inv = _inventory()
    hostvars = inv["_meta"]["hostvars"]  # type: ignore[index]
    edge = hostvars[inv["edge"]["hosts"][0]]["ansible_host"]  # type: ignore[index]
    app_host = inv["app"]["hosts"][0]  # type: ignore[index]
    app = hostvars[app_host]["ansible_host"]
    state = json.loads(ssh(app, "cat /var/lib/zapora/rollout/state.json").stdout)
    edge_defaults = yaml.safe_load((REPO / "roles/nginx/defaults/main.yml").read_text())
    port = edge_defaults["nginx_colour_ports"][state["active"]]
    # The colour port's scheme is the edge's for that colour (nginx_upstream_tls).
    tls = edge_defaults.get("nginx_upstream_tls", {}).get(state["active"], False)
    install_wrk = "command -v wrk || DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk"
    install = ssh(edge, install_wrk, timeout=300)
    if install.returncode != 0:
        raise SystemExit(f"cannot install wrk on the edge host: {install.stderr}")
    # Clients name the edge by its DNS name. A numeric Host (wrk's default here, 127.0.0.1)
    # matches CRS rule 920350: below the blocking threshold, but every such request is
    # written to ModSecurity's audit log, a cost real clients do not cause.
    through, through_p99 = wrk_rps(edge, f"https://127.0.0.1{PATH}", host=EDGE_HOST)
    direct, direct_p99 = wrk_rps(edge, f"{'https' if tls else 'http'}://{app}:{port}{PATH}")
    print(f"GET {PATH} through the edge (TLS): {through:.0f} req/s, p99 {through_p99:.1f} ms")
    print(
        f"GET {PATH} straight to {app_host}:{port} ({'TLS' if tls else 'plain'}): "
        f"{direct:.0f} req/s, p99 {direct_p99:.1f} ms"
    )
    print(f"edge cost: through/direct = {through / direct:.2f}")


def edge_limits(exempt: bool) -> None:
    """Exempt the controller (the lab's gateway) and the edge's loopback from the edge's
    rate limits for the bench's run, or put the inventory's limits back."""
    extra = (EXEMPT,) if exempt else ()
    result = run_playbook("edge.yml", *extra)
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-2000:])
        raise SystemExit(f"edge.yml ({'exempting' if exempt else 'restoring'} the limits) failed")


def main() -> int:
    edge_only = "--edge-only" in sys.argv[1:]
    print("rate limits: the controller and the edge's loopback are exempt for this run")
    edge_limits(exempt=True)
    try:
        if edge_only:
            edge_cost()
            return 0
        return bench()
    finally:
        edge_limits(exempt=False)
        print("rate limits: back to the inventory's settings")


def bench() -> int:
    load = Load()
    load.start()
    print(f"steady state for {STEADY:.0f} s, then {DEPLOYS} deploys under load ({WORKERS} clients)")
    time.sleep(STEADY)
    steady_end = time.time()
    switches: list[float] = []
    switched_at: list[float] = []
    colours: list[str] = []
    stop = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: stop.set())
    print(f"(kill -USR1 {os.getpid()} ends the run after the deploy in progress)")
    for n in range(1, DEPLOYS + 1):
        if stop.is_set():
            print(f"stopped by SIGUSR1 after {n - 1} deploys")
            break
        result = run_playbook("deploy.yml", *DEPLOY_VARS)
        seconds = re.search(r"switch_seconds=([\d.]+)", result.stdout)
        at = re.search(r"switched_at=([\d.]+)", result.stdout)
        colour = re.search(r"active on colour (\w+)", result.stdout)
        if result.returncode != 0 or not seconds or not at or not colour:
            load.stop()
            print(result.stdout[-4000:])
            raise SystemExit(f"deploy {n} failed")
        switches.append(float(seconds.group(1)))
        switched_at.append(float(at.group(1)))
        colours.append(colour.group(1))
        print(f"deploy {n:2d}: {colours[-1]:5s} switch {switches[-1]:.2f} s")
    time.sleep(3)
    load.stop()

    samples = load.samples
    status = Counter(s for _, _, s in samples)
    failed = sum(n for k, n in status.items() if not k.startswith(("2", "429")))
    steady = [d for t, d, s in samples if t < steady_end and s.startswith("2")]
    during = [
        d
        for t, d, s in samples
        if s.startswith("2") and any(abs(t - at) <= SWITCH_WINDOW for at in switched_at)
    ]
    print(f"requests: {len(samples)}  failed: {failed}  rate-limited (429): {status.get('429', 0)}")
    print(f"answers: {dict(status)}")
    print(f"p99 steady state: {p99(steady) * 1000:.1f} ms ({len(steady)} requests)")
    print(f"p99 during switches (±{SWITCH_WINDOW:.0f} s): {p99(during) * 1000:.1f} ms "
          f"({len(during)} requests)")  # fmt: skip
    print(
        "idle colour ready -> all edges switched: "
        f"{len(switches)} deploys, median {statistics.median(switches):.2f} s, "
        f"max {max(switches):.2f} s "
        f"(goal <= 2 s), colours {''.join(c[0] for c in colours)}"
    )
    edge_cost()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
