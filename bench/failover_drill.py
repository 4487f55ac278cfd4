"""PostgreSQL failover bench: N kills of the primary through playbooks/failover-drill.yml.

Runs the drill playbook N times per mode (Patroni synchronous_mode on, then off) against
an inventory: the lab by default, or any Patroni cluster with its inventory. Each run
kills the primary's host under a bounded write load (one client on an app host, one kept
connection, a row every 20 ms), times until a write is acknowledged again, counts
acknowledged writes that are missing and rows written twice, and brings the old primary
back as a replica before the next.

Prints per kill and in sum: failover time (median, max), acknowledged writes lost and
duplicates per mode, against the goals (docs/postgresql.md): median <= 15 s, max <= 20 s,
0 lost in synchronous mode. Exits 1 when a drill failed to run or lost a write in
synchronous mode.

  .venv/bin/python bench/failover_drill.py [--inventory inventory/lab] [--kills 10]
      [--modes sync,async] [--kill docker|pause|systemctl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GOAL_MEDIAN_S = 15.0
GOAL_MAX_S = 20.0


def drill(inventory: str, kill: str, mode: str, log_dir: Path, i: int) -> dict[str, Any]:
    result_file = log_dir / f"{mode}-{i}.json"
    log_file = log_dir / f"{mode}-{i}.log"
    args = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        inventory,
        str(REPO / "playbooks" / "failover-drill.yml"),
        "-e",
        f"failover_drill_kill={kill}",
        "-e",
        f"failover_drill_synchronous_mode={'true' if mode == 'sync' else 'false'}",
        "-e",
        f"failover_drill_result_file={result_file}",
    ]
    started = time.monotonic()
    with log_file.open("w") as log:
        rc = subprocess.run(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, timeout=900, check=False
        ).returncode
    result: dict[str, Any] = (
        json.loads(result_file.read_text()) if result_file.exists() else {"error": "no result"}
    )
    result["rc"] = rc
    result["run_seconds"] = round(time.monotonic() - started, 1)
    result["log"] = str(log_file)
    return result


def summary(mode: str, runs: list[dict[str, Any]]) -> tuple[str, bool]:
    times = [r["writable_after_s"] for r in runs if r.get("writable_after_s") is not None]
    lost = sum(len(r.get("lost", [])) for r in runs)
    dups = sum(len(r.get("duplicates", [])) for r in runs)
    acked = sum(r.get("acknowledged", 0) for r in runs)
    broken = [r for r in runs if "writable_after_s" not in r]
    line = f"{mode}: {len(runs)} kills"
    if times:
        med, worst = statistics.median(times), max(times)
        line += (
            f", failover median {med:.1f} s (goal <= {GOAL_MEDIAN_S:.0f}: "
            f"{'met' if med <= GOAL_MEDIAN_S else 'MISSED'}), max {worst:.1f} s "
            f"(goal <= {GOAL_MAX_S:.0f}: {'met' if worst <= GOAL_MAX_S else 'MISSED'}), "
            f"min {min(times):.1f} s"
        )
    line += f", acknowledged writes {acked}, lost {lost}, duplicates {dups}"
    by_etcd = {
        led: [
            r["writable_after_s"]
            for r in runs
            if r.get("writable_after_s") is not None and bool(r.get("killed_etcd_leader")) == led
        ]
        for led in (True, False)
    }
    for led, values in by_etcd.items():
        if values:
            line += (
                f"; {'with' if led else 'without'} the etcd leader on the killed host: "
                f"{len(values)} kills, median {statistics.median(values):.1f} s, "
                f"max {max(values):.1f} s"
            )
    if broken:
        line += f", {len(broken)} drills without a result (see their logs)"
    ok = not broken and (mode != "sync" or lost == 0)
    return line, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", default=str(REPO / "inventory" / "lab"))
    parser.add_argument("--kills", type=int, default=10, help="kills per mode")
    parser.add_argument("--modes", default="sync,async")
    parser.add_argument("--kill", default="docker", choices=["docker", "pause", "systemctl"])
    parser.add_argument("--log-dir", default="", help="keep each drill's output here")
    args = parser.parse_args()
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="zapora-failover-bench-")).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"inventory {args.inventory}, kill method {args.kill}, drill logs in {log_dir}")
    lines, ok = [], True
    for mode in args.modes.split(","):
        runs = []
        for i in range(1, args.kills + 1):
            r = drill(str(Path(args.inventory).resolve()), args.kill, mode, log_dir, i)
            runs.append(r)
            print(
                f"{mode} kill {i:2d}: {r.get('killed', '?')} -> {r.get('new_leader', '?')}, "
                f"writable after {r.get('writable_after_s')} s, acked {r.get('acknowledged')}, "
                f"lost {len(r.get('lost', []))}, duplicates {len(r.get('duplicates', []))}, "
                f"whole after {r.get('rejoined_after_s')} s, "
                f"{'etcd leader killed too, ' if r.get('killed_etcd_leader') else ''}"
                f"drill rc {r['rc']} "
                f"({r['run_seconds']} s)",
                flush=True,
            )
            if r["rc"] != 0 and "writable_after_s" not in r:
                print(f"  drill failed: see {r['log']}", flush=True)
        line, mode_ok = summary(mode, runs)
        lines.append(line)
        ok = ok and mode_ok
        (log_dir / f"{mode}.json").write_text(json.dumps(runs, indent=2) + "\n")
    print("\n".join(["", "summary:", *lines]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
