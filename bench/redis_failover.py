"""Sentinel failover bench on loopback: kill the primary N times under a steady load.

Starts real redis-server and Sentinel processes on 127.0.0.1 with the redis role's own
templates (tests/app/redis_sentinel_cluster.py), then N times: SIGKILL the primary, time
until the Sentinels name a new primary that answers as one, restart the killed node and
wait until it is back as a replica. Meanwhile the API's own client (zapora.infra.redis,
Sentinel-managed, the settings the API runs with) sends a steady, bounded load: every
10 ms one revocation check (EXISTS) and one stream entry (XADD, then WAIT for a replica).

Prints per kill and in sum: failover time (median, max), operations failed per failover,
the time until every operation succeeds again, and acknowledged stream entries lost (an
entry whose XADD + WAIT returned success but which the new primary does not have).

  .venv/bin/python bench/redis_failover.py [--kills 10] [--data-nodes 3] [--min-replicas 1]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "app"))

from zapora.infra.redis import redis_from_settings  # noqa: E402
from zapora.settings import Settings  # noqa: E402

STREAM = "zapora:bench-failover"


def _cluster_module() -> Any:
    path = REPO / "tests/app/redis_sentinel_cluster.py"
    spec = importlib.util.spec_from_file_location("zapora_redis_cluster", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Load:
    """One EXISTS and one XADD+WAIT every `interval` seconds; records failures and acks."""

    def __init__(self, client: Any, interval: float) -> None:
        self.client = client
        self.interval = interval
        self.failures: list[float] = []
        self.errors: list[str] = []
        self.latencies: list[tuple[float, float]] = []
        self.acked: list[bytes] = []
        self.ops = 0
        self.stopping = False

    async def run(self) -> None:
        n = 0
        while not self.stopping:
            started = time.monotonic()
            n += 1
            try:
                await self.client.exists(f"auth:revoked:{n}")
                entry = await self.client.xadd(STREAM, {"n": str(n)})
                self.acked.append(entry)
            except Exception as exc:  # noqa: BLE001 - a failed operation is what is counted
                self.failures.append(time.monotonic())
                self.errors.append(f"{type(exc).__name__}: {str(exc)[-70:]}")
            self.latencies.append((started, time.monotonic() - started))
            self.ops += 1
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    rsc = _cluster_module()
    with rsc.started(
        data_nodes=args.data_nodes,
        sentinels=3,
        redis_min_replicas_to_write=args.min_replicas,
        **(
            {"redis_sentinel_failover_timeout_ms": args.failover_timeout_ms}
            if args.failover_timeout_ms
            else {}
        ),
    ) as cluster:
        settings = Settings(
            environment="development",
            redis_url="redis://sentinel/0",
            redis_sentinels=cluster.sentinel_addresses,
            redis_username="zapora",
            redis_password_file=cluster.password_file,
            redis_wait_replicas=args.wait_replicas,
        )
        client = redis_from_settings(settings)
        load = Load(client, args.interval)
        task = asyncio.create_task(load.run())
        await asyncio.sleep(1)
        kills: list[dict[str, Any]] = []
        checked = 0  # acked entries before this index were found after an earlier failover
        deadline = time.monotonic() + args.max_seconds
        for i in range(args.kills):
            if time.monotonic() > deadline:
                print(f"stopped after {i} kills: --max-seconds {args.max_seconds} reached")
                break
            old = cluster.primary_port()
            failures_before = len(load.failures)
            errors_before = len(load.errors)
            killed_at = time.monotonic()
            cluster.node(old).kill()
            failover = await asyncio.to_thread(cluster.wait_for_failover, old)
            # Keep the load on the new primary for a while, then bring the old one back.
            await asyncio.sleep(2)
            await asyncio.to_thread(rsc.rejoin, cluster, old)
            await asyncio.sleep(1)
            failed = load.failures[failures_before:]
            slowest = max((d for t, d in load.latencies if t >= killed_at - 1), default=0.0)
            new = cluster.admin(cluster.primary_port())
            # Every entry acknowledged since the last check, the ones just before the kill too.
            acked = load.acked[checked:]
            checked = len(load.acked)
            present = {e for e, _ in new.xrange(STREAM, min=acked[0])} if acked else set()
            lost = [e for e in acked if e not in present]
            kill = {
                "kill": i + 1,
                "failover_s": round(failover, 2),
                "ops_failed": len(failed),
                "all_ok_again_s": round(max(failed) - killed_at, 2) if failed else 0.0,
                "slowest_op_s": round(slowest, 2),
                "acked_entries": len(acked),
                "acked_entries_lost": len(lost),
                "errors": sorted(set(load.errors[errors_before:])),
            }
            kills.append(kill)
            print(json.dumps(kill), flush=True)
        load.stopping = True
        await task
        await client.aclose()
        cluster.close_clients()
    times = [k["failover_s"] for k in kills]
    failed = [k["ops_failed"] for k in kills]
    return {
        "data_nodes": args.data_nodes,
        "min_replicas_to_write": args.min_replicas,
        "wait_replicas": args.wait_replicas,
        "down_after_ms": rsc.role_defaults()["redis_sentinel_down_after_ms"],
        "failover_timeout_ms": args.failover_timeout_ms
        or rsc.role_defaults()["redis_sentinel_failover_timeout_ms"],
        "load_ops_per_s": round(1 / args.interval),
        "kills": len(kills),
        "failover_median_s": round(statistics.median(times), 2) if times else None,
        "failover_max_s": max(times) if times else None,
        "ops_failed_per_failover_median": statistics.median(failed) if failed else None,
        "ops_failed_per_failover_max": max(failed) if failed else None,
        "all_ok_again_max_s": max((k["all_ok_again_s"] for k in kills), default=None),
        "slowest_op_max_s": max((k["slowest_op_s"] for k in kills), default=None),
        "acked_entries_total": sum(k["acked_entries"] for k in kills),
        "acked_entries_lost_total": sum(k["acked_entries_lost"] for k in kills),
        "total_ops": load.ops,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10, choices=range(1, 31), metavar="1..30")
    parser.add_argument("--data-nodes", type=int, default=3, choices=(2, 3))
    parser.add_argument("--min-replicas", type=int, default=1, choices=(0, 1))
    parser.add_argument("--wait-replicas", type=int, default=1, choices=(0, 1))
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between operations")
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--failover-timeout-ms", type=int, default=0, help="0: the role's default")
    args = parser.parse_args()
    summary = asyncio.run(bench(args))
    print("summary " + json.dumps(summary))
    ok = summary["kills"] and summary["acked_entries_lost_total"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
