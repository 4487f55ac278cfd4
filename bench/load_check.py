"""`make load-test`: a short load on the API's hot routes, with thresholds that fail it.

The API under gunicorn (2 workers, production settings) against local PostgreSQL and Redis,
the same server bench/run.py measures, loaded with wrk for LOAD_SECONDS (5) per route:
GET /menu-items (the cached list), GET /orders/{id} and POST /orders (a signed-in customer,
a new Idempotency-Key per order). Per route it prints requests, req/s, p50, p99 and the
error rate (non-2xx answers and socket errors over all requests) and fails (exit 1) when
p99 is over LOAD_MAX_P99_MS (500) or the error rate over LOAD_MAX_ERROR_RATE (0.01) on any
route, or when a route got fewer than LOAD_MIN_REQUESTS (100) requests. All traffic goes
to 127.0.0.1; the whole run takes about a minute.

The thresholds are the service level a deploy must keep (deploy.yml's watch window allows
p99 2 s and 1 % 5xx), with room for a loaded CI machine: this catches a hot route that got
an order of magnitude slower or started failing, not a 10 % regression (bench/run.py's
figures in docs/performance.md are for that).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# Fewer connections than the benchmark's 32: the point is latency under a steady load,
# not the peak rate.
os.environ.setdefault("BENCH_CONNECTIONS", "8")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import run as bench

SECONDS = int(os.environ.get("LOAD_SECONDS", "5"))
MAX_P99_MS = float(os.environ.get("LOAD_MAX_P99_MS", "500"))
MAX_ERROR_RATE = float(os.environ.get("LOAD_MAX_ERROR_RATE", "0.01"))
MIN_REQUESTS = int(os.environ.get("LOAD_MIN_REQUESTS", "100"))


def verdicts(results: dict[str, dict[str, float]]) -> list[str]:
    """What breaks a threshold, one line per breach (empty when every route holds)."""
    failed = []
    for route, row in results.items():
        total = max(row["requests"], 1.0)
        rate = (row["errors"] + row["socket_errors"]) / total
        if row["requests"] < MIN_REQUESTS:
            failed.append(f"{route}: {row['requests']:.0f} requests < {MIN_REQUESTS}")
        if row["p99_ms"] > MAX_P99_MS:
            failed.append(f"{route}: p99 {row['p99_ms']:.1f} ms > {MAX_P99_MS:.0f} ms")
        if rate > MAX_ERROR_RATE:
            failed.append(f"{route}: error rate {rate:.2%} > {MAX_ERROR_RATE:.2%}")
    return failed


def main() -> int:
    if shutil.which("wrk") is None:
        print(
            "wrk is missing: `apt-get install wrk` (make setup-test installs it)", file=sys.stderr
        )
        return 2
    results: dict[str, dict[str, float]] = {}
    with bench.api_server("zapora-load-", ZAPORA_LOG_LEVEL="WARNING") as api:
        order = httpx.post(
            api.base + "/orders",
            json={"items": [{"menu_item_id": api.ids["item_a"], "quantity": 2}]},
            headers=api.auth,
        ).json()
        script = bench.post_orders_script(api.tmp / "post_orders.lua", api.token, api.ids)
        bench.wrk(api.base + "/menu-items", seconds=1)  # warm-up: caches, pools, bytecode
        results["GET /menu-items"] = bench.wrk(api.base + "/menu-items", seconds=SECONDS)
        results["GET /orders/{id}"] = bench.wrk(
            f"{api.base}/orders/{order['id']}", headers=api.auth, seconds=SECONDS
        )
        results["POST /orders"] = bench.wrk(api.base + "/orders", script=script, seconds=SECONDS)

    print(
        f"load: {bench.CONNECTIONS} connections, {SECONDS} s per route, 2 workers,"
        f" load average {os.getloadavg()[0]:.1f}; thresholds p99 <= {MAX_P99_MS:.0f} ms,"
        f" error rate <= {MAX_ERROR_RATE:.2%}, >= {MIN_REQUESTS} requests"
    )
    print(f"{'route':18} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for route, row in results.items():
        errors = row["errors"] + row["socket_errors"]
        print(
            f"{route:18} {row['requests']:9.0f} {row['rps']:8.0f} {row['p50_ms']:8.2f}"
            f" {row['p99_ms']:8.2f} {errors:7.0f}"
        )
    failed = verdicts(results)
    for line in failed:
        print(f"load-test FAILED: {line}")
    if not failed:
        print("load-test ok: every hot route within its thresholds")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
