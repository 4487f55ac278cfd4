"""`make bench-autoscale`: the API's replicas following a stepped load through the lab's edge.

Steps (all through https://127.0.0.1 on edge1: TLS, WAF, the upstreams; wrk there,
tests/e2e/edge_load.py): low (paced logins, below the 70 % CPU target), high (logins as
fast as 6 connections go, bcrypt-bound), low again until the replicas are back to
app_replicas_min after the stabilisation window. The high step runs as consecutive 10 s
wrk segments so req/s and p99 are seen before and after the scale-up. Printed: replicas
per app host over time, the time to the first scale-up, req/s and p99 of the first and
last high segments, failed requests (goal 0), and the capacity gained per added
replica: (req/s after / before - 1) / (replicas after / before - 1), 1.0 = linear.

Environment: BENCH_LOW_S (30), BENCH_HIGH_S (120), BENCH_COOLDOWN_S (240).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import app_state, lab_from_inventory  # noqa: E402
from tests.e2e.edge_load import EdgeLoad, WrkResult, load_customer  # noqa: E402
from tests.e2e.test_autoscale import counts  # noqa: E402

LOW_S = int(os.environ.get("BENCH_LOW_S", "30"))
HIGH_S = int(os.environ.get("BENCH_HIGH_S", "120"))
COOLDOWN_S = int(os.environ.get("BENCH_COOLDOWN_S", "240"))
SEGMENT_S = 10


def main() -> int:
    the_lab = lab_from_inventory()
    host0 = the_lab.groups["app"][0]
    colour = str(app_state(the_lab, host0)["active"])
    customer = load_customer()
    timeline: list[tuple[float, dict[str, int]]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not stop.is_set():
            timeline.append((time.monotonic() - t0, counts(the_lab, colour)))
            stop.wait(5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    results: list[tuple[str, float, WrkResult, dict[str, int]]] = []

    def run(step: str, seconds: int, connections: int, delay_ms: int) -> WrkResult:
        at = time.monotonic() - t0
        r = EdgeLoad(the_lab, seconds=seconds, connections=connections, login=customer,
                     delay_ms=delay_ms).start().wait()  # fmt: skip
        reps = counts(the_lab, colour)
        results.append((step, at, r, reps))
        print(f"{at:6.0f} s  {step:5} {seconds:3d} s: {r.requests:5d} logins {r.rps:6.1f}/s "
              f"p99 {r.p99_ms:7.0f} ms failed {r.failed}  replicas {reps}", flush=True)  # fmt: skip
        return r

    run("low", LOW_S, 1, 1000)
    high_started = time.monotonic() - t0
    for _ in range(max(HIGH_S // SEGMENT_S, 2)):
        run("high", SEGMENT_S, 6, 0)
    high_ended = time.monotonic() - t0
    cooldown_end = time.monotonic() + COOLDOWN_S
    baseline = timeline[0][1]
    while time.monotonic() < cooldown_end:
        run("low", 20, 1, 1000)
        if counts(the_lab, colour) == baseline:
            break
    stop.set()
    sampler.join(timeout=30)

    print("\nreplicas over time (s since start: per app host)")
    last = None
    for at, reps in timeline:
        if reps != last:
            print(f"  {at:6.0f} s  {reps}")
            last = reps
    floor = sum(baseline.values())
    ups = [at for at, reps in timeline if at >= high_started and sum(reps.values()) > floor]
    downs = [at for at, reps in timeline if at >= high_ended and reps == baseline]
    highs = [(r, reps) for step, _, r, reps in results if step == "high"]
    (first, reps_first), (lastr, reps_last) = highs[0], highs[-1]
    failed = sum(r.failed for _, _, r, _ in results)
    total = sum(r.requests for _, _, r, _ in results)
    print(f"\ntime to the first scale-up (from the high step's start): "
          f"{ups[0] - high_started:.0f} s" if ups else "\nno scale-up seen")  # fmt: skip
    print(f"back to {baseline}: {downs[0] - high_ended:.0f} s after the high step"
          if downs else f"not back to {baseline} within {COOLDOWN_S} s")  # fmt: skip
    print(f"high step, first segment: {first.rps:.1f} logins/s, p99 {first.p99_ms:.0f} ms, "
          f"replicas {sum(reps_first.values())}")  # fmt: skip
    print(f"high step, last segment:  {lastr.rps:.1f} logins/s, p99 {lastr.p99_ms:.0f} ms, "
          f"replicas {sum(reps_last.values())}")  # fmt: skip
    added = sum(reps_last.values()) / max(sum(reps_first.values()), 1) - 1
    if added > 0 and first.rps > 0:
        ratio = (lastr.rps / first.rps - 1) / added
        print(f"capacity gained per added replica (1.0 = linear): {ratio:.2f}")
    print(f"requests {total}, failed {failed} (goal 0)")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
