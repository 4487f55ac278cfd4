"""`make bench-failover`: faults of the lab's data tier as clients see them, through the edge.

Four clients (tests/e2e/order_writer.py with retry_key: a customer each) POST orders to
https://127.0.0.1:8443 with an Idempotency-Key, each sending its key again until the API
acknowledges it (201), then the next. Per fault, after a steady state:

  kill        `docker kill` of the PostgreSQL leader's host (on the lab it also runs a
              Redis node, an etcd member and a Sentinel); `docker start` after --fault-s
  pause       `docker pause` of the leader's host (frozen: its TCP peers hang, no reset);
              `docker unpause` after --fault-s
  redis-kill  SIGKILL of the Redis primary's redis-server (systemd restarts it)
  redis-down  every Redis data node stopped for --fault-s, then started

It prints per fault: the longest a client waited from a key's first send to its
acknowledgement, failed requests (any answer but 201, transport errors; 429s of the edge
apart), 5xx by status, acknowledged orders lost (not in the database) and doubled (orders
of the clients beyond the acknowledged ones), and when Patroni named a new leader.
In the Redis faults a fifth client (LatencyProbe) sends `GET /menu-items` and `POST /orders`
one at a time, every PROBE_S in turn, and the bench prints p50 / p99 of each with Redis up
(the steady state: give it --steady-s 40 for a p99 of ~150 requests) and while Redis is
down (both nodes stopped, or the primary killed until Sentinel has a new one).
Goals (issue 19, docs/failover.md): killed host <= 20 s, frozen host <= 25 s, 0 lost,
0 doubled, no 500; Redis down: p99 within 50 ms of Redis up. Exit 1 when a goal is missed.

For the run the edge exempts the controller from its rate limits (bench/rollout.py's
edge_limits, edge.yml twice): four clients retrying exceed 100 requests a minute. After each
fault the bench waits until Patroni has a leader and streaming replicas and the API is
ready through the edge. All traffic goes to the lab; every part is bounded in time.
Run it under the lab's lock: `flock /tmp/zapora-lab.lock make bench-failover`.

  .venv/bin/python bench/failover.py [--faults kill,pause,redis-kill,redis-down]
      [--rounds 1] [--clients 4] [--fault-s 40] [--steady-s 10] [--after-s 20] [--keep-limits]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import cast

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from rollout import edge_limits  # noqa: E402 - bench/rollout.py, beside this file

from tests.e2e.conftest import (  # noqa: E402
    INVENTORY,
    Lab,
    _wait_until_ready,
    api_client,
    load_lab,
    new_customer,
    new_menu_item,
    venv_tool,
)
from tests.e2e.faults import (  # noqa: E402
    docker,
    etcd_leader,
    patroni_leader,
    patroni_whole,
    redis_primary,
    wait_until,
)
from tests.e2e.order_writer import OrderWriter  # noqa: E402

GOALS_S = {"kill": 20.0, "pause": 25.0}
PACE_S = 0.5  # between one client's acknowledged order and its next key
RETRY_S = 0.5  # before a client sends a failed key again
FAULTS = ("kill", "pause", "redis-kill", "redis-down")
P99_GOAL_MS = 50.0  # Redis down: p99 at most this much above Redis up
PROBE_S = 0.125  # between the latency probe's requests (GET and POST in turn)
PROBE_CUSTOMERS = 4  # its orders go to these in turn: 1 a second each, under the write limit


class LatencyProbe:
    """One client sending `GET /menu-items` and `POST /orders` (a new Idempotency-Key each,
    customers in turn) one at a time through the edge: per request the monotonic time it
    was sent, the endpoint, its latency (ms) and status."""

    def __init__(self) -> None:
        with api_client() as c:
            self._item = str(new_menu_item(c, "bench probe")["id"])
            self._customers = [new_customer(c, "bench-probe") for _ in range(PROBE_CUSTOMERS)]
        self.samples: list[tuple[float, str, float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {"items": [{"menu_item_id": self._item, "quantity": 1}]}
        turn = 0
        with api_client() as c:
            c.timeout = httpx.Timeout(30)
            while not self._stop.is_set():
                endpoint = ("GET /menu-items", "POST /orders")[turn % 2]
                sent = time.monotonic()
                try:
                    if turn % 2 == 0:
                        r = c.get("/menu-items")
                    else:
                        headers = self._customers[(turn // 2) % PROBE_CUSTOMERS]
                        r = c.post(
                            "/orders",
                            json=body,
                            headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
                        )
                    status = str(r.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.samples.append((sent, endpoint, (time.monotonic() - sent) * 1000, status))
                turn += 1
                self._stop.wait(PROBE_S)

    def __enter__(self) -> LatencyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def window(self, endpoint: str, start: float, end: float) -> tuple[int, float, float, int]:
        """Requests of `endpoint` sent in [start, end): count, p50 ms, p99 ms, non-2xx."""
        rows = [(ms, st) for t, e, ms, st in self.samples if e == endpoint and start <= t < end]
        ms = sorted(m for m, _ in rows)
        if len(ms) < 2:
            return len(ms), float("nan"), float("nan"), 0
        cuts = statistics.quantiles(ms, n=100, method="inclusive")
        return len(ms), cuts[49], cuts[98], sum(not st.startswith("2") for _, st in rows)


def hosts_file(lab: Lab, host: str) -> None:
    """Docker rewrites a restarted container's /etc/hosts: the common role puts the
    inventory's names back (what a rebooted real host never needs)."""
    subprocess.run(
        [
            venv_tool("ansible-playbook"),
            "-i",
            str(INVENTORY),
            str(REPO / "playbooks" / "bootstrap.yml"),
            "--tags",
            "hostname",
            "--limit",
            host,
        ],
        capture_output=True,
        check=True,
        timeout=300,
        cwd=REPO,
    )


def fault(lab: Lab, name: str, fault_s: float) -> dict[str, object]:
    """Make the fault, hold it `fault_s`, undo it; what was seen meanwhile."""
    seen: dict[str, object] = {}
    started = time.monotonic()
    if name in ("kill", "pause"):
        host = patroni_leader(lab)
        seen["host"] = host
        # When the host also leads etcd, etcd's new leader renews Patroni's lease: +ttl.
        seen["etcd_leader"] = etcd_leader(lab)
        docker("kill" if name == "kill" else "pause", lab.container(host))
        new = ""
        while time.monotonic() - started < fault_s:
            if not new:
                new = patroni_leader(lab, spare=host)
                if new and new != host:
                    seen["new_leader"] = new
                    seen["leader_after_s"] = round(time.monotonic() - started, 1)
                else:
                    new = ""
            time.sleep(1)
        docker("start" if name == "kill" else "unpause", lab.container(host))
        if name == "kill":
            hosts_file(lab, host)
    elif name == "redis-kill":
        host = redis_primary(lab)
        seen["host"] = host
        lab.ssh(host, "kill -9 $(systemctl show -p MainPID --value redis-server)")
        seen["down"] = (time.monotonic(), time.monotonic() + fault_s)
        time.sleep(fault_s)
    else:
        nodes = lab.groups["redis"]
        seen["host"] = ",".join(nodes)
        for host in nodes:
            lab.ssh(host, "systemctl stop redis-server")
        seen["down"] = (time.monotonic(), time.monotonic() + fault_s)
        time.sleep(fault_s)
        for host in nodes:
            lab.ssh(host, "systemctl start redis-server")
    return seen


def run_fault(lab: Lab, name: str, args: argparse.Namespace) -> tuple[bool, float]:
    limit = args.steady_s + args.fault_s + args.after_s + 300
    writers = [
        OrderWriter(limit_s=limit, pace_s=PACE_S, retry_key=True, retry_s=RETRY_S)
        for _ in range(args.clients)
    ]
    probe = LatencyProbe() if name.startswith("redis") else None
    with contextlib.ExitStack() as running:
        for w in writers:
            running.enter_context(w)
        if probe is not None:
            running.enter_context(probe)
        steady_from = time.monotonic()
        time.sleep(args.steady_s)
        at = time.monotonic()
        seen = fault(lab, name, args.fault_s)
        time.sleep(args.after_s)
    wait_until(lambda: patroni_whole(lab), 300, "a Patroni leader with streaming replicas")
    _wait_until_ready(f"the {name} fault", 180)
    status: Counter[str] = Counter()
    for w in writers:
        status.update(w.status)
    waits = [(t - at, s) for w in writers for t, s in w.waits]
    longest = max(waits, key=lambda ts: ts[1])
    lost = sum(len(w.missing(lab)) for w in writers)
    doubled = sum(w.doubled(lab) for w in writers)
    failed = sum(n for k, n in status.items() if k not in ("201", "429"))
    five = {k: n for k, n in status.items() if k.startswith("5")}
    goal = GOALS_S.get(name)
    ok = lost == 0 and doubled == 0 and "500" not in status
    ok = ok and (goal is None or longest[1] <= goal)
    print(
        f"{name:10s} on {seen.get('host')}: longest client wait {longest[1]:.1f} s "
        f"(key first sent {longest[0]:+.1f} s from the fault"
        + (f"; goal <= {goal:.0f} s" if goal else "")
        + f"), failed requests {failed}, 429 {status.get('429', 0)}, 5xx {five}, "
        f"acknowledged {sum(w.served for w in writers)}, lost {lost}, doubled {doubled}"
        + (
            f", new leader {seen['new_leader']} after {seen['leader_after_s']} s"
            if "new_leader" in seen
            else ""
        )
        + (f", etcd leader was {seen['etcd_leader']}" if "etcd_leader" in seen else "")
        + f", load average {os.getloadavg()[0]:.1f}"
        + ("" if ok else "  MISSED"),
        flush=True,
    )
    for w in writers:
        for line in w.failures[:3]:
            print(f"    {line}")
    if probe is not None and "down" in seen:
        down_from, down_until = cast(tuple[float, float], seen["down"])
        for endpoint in ("GET /menu-items", "POST /orders"):
            n_up, p50_up, p99_up, bad_up = probe.window(endpoint, steady_from, at)
            n_dn, p50_dn, p99_dn, bad_dn = probe.window(endpoint, down_from, down_until)
            missed = name == "redis-down" and not p99_dn - p99_up <= P99_GOAL_MS
            ok = ok and not missed
            print(
                f"    {endpoint:16s} Redis up: {n_up} requests, p50 {p50_up:.1f} ms, "
                f"p99 {p99_up:.1f} ms, non-2xx {bad_up}; Redis down: {n_dn} requests, "
                f"p50 {p50_dn:.1f} ms, p99 {p99_dn:.1f} ms, non-2xx {bad_dn}; "
                f"p99 down - up {p99_dn - p99_up:+.1f} ms"
                + (f" (goal <= {P99_GOAL_MS:.0f})" if name == "redis-down" else "")
                + ("  MISSED" if missed else ""),
                flush=True,
            )
    return ok, longest[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--rounds", type=int, default=1, help="each fault this many times")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--steady-s", type=float, default=10)
    parser.add_argument("--fault-s", type=float, default=40)
    parser.add_argument("--after-s", type=float, default=20)
    parser.add_argument(
        "--keep-limits", action="store_true", help="leave the edge's rate limits as they are"
    )
    args = parser.parse_args()
    faults = args.faults.split(",")
    unknown = set(faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}: choose from {', '.join(FAULTS)}")
    lab = load_lab()
    if not args.keep_limits:
        print("rate limits: the controller is exempt for this run (edge.yml)", flush=True)
        edge_limits(exempt=True)
    try:
        ok = True
        waits: dict[str, list[float]] = {name: [] for name in faults}
        for _ in range(args.rounds):
            for name in faults:
                fault_ok, longest = run_fault(lab, name, args)
                ok = ok and fault_ok
                waits[name].append(longest)
        if args.rounds > 1:
            print("\nlongest client wait per fault over the rounds:")
            for name, values in waits.items():
                each = ", ".join(f"{v:.1f}" for v in values)
                print(
                    f"  {name:10s} median {statistics.median(values):.1f} s, "
                    f"max {max(values):.1f} s ({each})"
                )
    finally:
        if not args.keep_limits:
            edge_limits(exempt=False)
            print("rate limits: back to the inventory's settings")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
