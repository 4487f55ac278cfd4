"""What Redis being away costs a request: the API under gunicorn against local PostgreSQL and
Redis, loaded with wrk, first with Redis up, then with Redis stopped.

Prints req/s, p50, p99 and non-2xx of GET /menu-items and POST /orders (a new
Idempotency-Key per request) in both states, each at a paced load (BENCH_RATE requests/s in
all, default 100) and at full load (as fast as wrk's connections go), and p99's difference
(issue 19's goal: within 50 ms). With Redis stopped the circuit breaker
(app/zapora/infra/breaker.py) opens on the first failed connection in each gunicorn worker;
requests then skip Redis (the list is read from PostgreSQL, the per-user write limit is not
counted) until its probe gets an answer.
All traffic goes to 127.0.0.1; every run is bounded in time (about 90 s in all).

  .venv/bin/python bench/redis_down.py

Environment: BENCH_RATE (100), BENCH_SECONDS (10), BENCH_CONNECTIONS (32), ZAPORA_WORKERS
(2), the last three as bench/run.py (whose helpers this uses).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # bench/run.py, beside this file

# The paced load: requests/s offered by all connections together (the measure is a
# request's latency, not the saturated throughput, which the "full" rows show).
RATE = float(os.environ.get("BENCH_RATE", "100"))


def main() -> int:
    if shutil.which("wrk") is None:
        print("wrk is missing: `apt-get install wrk` (make setup installs it)", file=sys.stderr)
        return 2
    results: dict[str, dict[str, float]] = {}
    with run.api_server("zapora-bench-redis-down-") as api:
        one_item = [{"menu_item_id": api.ids["item_a"], "quantity": 2}]
        orders = run.post_orders_script(api.tmp / "orders.lua", api.token, api.ids, one_item)
        paced_orders = run.post_orders_script(
            api.tmp / "paced_orders.lua", api.token, api.ids, one_item, prelude=run.pace(RATE)
        )
        paced = api.tmp / "pace.lua"
        paced.write_text(run.pace(RATE))
        run.wrk(api.base + "/menu-items", seconds=2)
        for state in ("up", "down"):
            if state == "down":
                api.servers.redis_proc.terminate()
                api.servers.redis_proc.wait(10)
                time.sleep(1)
            for endpoint, full, paced_script in (
                ("GET /menu-items", None, paced),
                ("POST /orders", orders, paced_orders),
            ):
                path = endpoint.split()[1]
                results[f"{endpoint} @{RATE:.0f}/s, Redis {state}"] = run.wrk(
                    api.base + path, script=paced_script
                )
                results[f"{endpoint} full, Redis {state}"] = run.wrk(api.base + path, script=full)
        breaker = httpx.get(api.base + "/health/ready").json().get("checks", {})
    print(
        f"workers={run.WORKERS} connections={run.CONNECTIONS} seconds={run.SECONDS}"
        f" cores={os.cpu_count()} load average={os.getloadavg()[0]:.1f}"
    )
    print(f"{'endpoint':42} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for name, row in results.items():
        print(
            f"{name:42} {row['rps']:9.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f}"
            f" {row['errors']:8.0f}"
        )
    report: dict[str, Any] = {"readiness checks with Redis down": breaker}
    for endpoint in ("GET /menu-items", "POST /orders"):
        for load in (f"@{RATE:.0f}/s", "full"):
            up = results[f"{endpoint} {load}, Redis up"]["p99_ms"]
            down = results[f"{endpoint} {load}, Redis down"]["p99_ms"]
            print(
                f"{endpoint} {load}: p99 Redis down - up = {down - up:+.2f} ms"
                " (goal <= 50 ms at a load PostgreSQL alone can carry)"
            )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
