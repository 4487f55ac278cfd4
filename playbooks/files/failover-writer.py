#!/usr/bin/python3
"""Bounded write load and its account for playbooks/failover-drill.yml.

write:  inserts numbered rows (run, n) through one libpq connection string (multi-host,
        target_session_attrs=read-write) on one kept psql session, as an application's
        pool would; after any failure it reconnects, which finds the current primary. A failed insert is retried with the same n, so a row
        whose COMMIT reached the server but whose answer was lost shows up twice (a
        duplicate). Every attempt is logged: "ack|fail N START END". Stops when the stop
        file exists or after --seconds.
report: compares the log with the rows the (new) primary holds and prints JSON:
        acknowledged rows missing (lost), rows present twice (duplicates), seconds from
        the kill (--kill-at, epoch, taken when the kill returned) until the first insert
        acknowledged after the first one that failed.

Runs on a host the database admits as a client (the drill picks an app host); needs
python3 and psql only. The password comes from a passfile named in the connection string.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time


def psql(dsn: str, sql: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", dsn, "-c", sql],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Session:
    """One psql process on one connection; statements go in on stdin, markers come out."""

    def __init__(self, dsn: str) -> None:
        self.proc = subprocess.Popen(
            ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", dsn],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.buffer = b""

    def insert(self, sql: str, marker: str, timeout: float) -> bool:
        """True when the server acknowledged the statement (its marker came back)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(f"{sql};\n\\echo {marker}\n".encode())
            self.proc.stdin.flush()
        except OSError:
            return False
        deadline = time.time() + timeout
        while True:
            if b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                if line.decode().strip() == marker:
                    return True
                continue
            left = deadline - time.time()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                return False
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:  # psql exited: connection lost or the statement failed
                return False
            self.buffer += chunk

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def write(args: argparse.Namespace) -> int:
    """Like an application's pool of one: keep the connection, reconnect on any failure."""
    end = time.time() + args.seconds
    n = 1
    session: Session | None = None
    with open(args.log, "a", buffering=1) as log:
        while time.time() < end and not os.path.exists(args.stop):
            start = time.time()
            if session is None:
                session = Session(args.dsn)
            sql = f"INSERT INTO {args.table} (run, n) VALUES ('{args.run}', {n})"
            ok = session.insert(sql, f"ack-{n}", args.timeout)
            log.write(f"{'ack' if ok else 'fail'} {n} {start:.3f} {time.time():.3f}\n")
            if ok:
                n += 1
            else:
                session.close()
                session = None
            time.sleep(max(0.0, args.interval - (time.time() - start)))
    if session is not None:
        session.close()
    return 0


def report(args: argparse.Namespace) -> int:
    acked: list[int] = []
    attempts = failed = 0
    first_fail: float | None = None  # the first attempt after the kill that failed
    first_after: float | None = None  # the first ack after that failure
    acked_after = 0
    with open(args.log) as log:
        for line in log:
            kind, n, start, end = line.split()
            attempts += 1
            if kind != "ack":
                failed += 1
                if first_fail is None and float(end) > args.kill_at:
                    first_fail = float(start)
                continue
            acked.append(int(n))
            if first_fail is not None and float(start) > first_fail:
                acked_after += 1
                if first_after is None:
                    first_after = float(end)
    rows = None
    for _ in range(30):  # the new primary may still be settling: bounded retries
        try:
            res = psql(
                args.dsn,
                f"SELECT n, count(*) FROM {args.table} WHERE run = '{args.run}' GROUP BY n",
                args.timeout,
            )
        except subprocess.TimeoutExpired:
            res = None
        if res is not None and res.returncode == 0:
            rows = dict((int(a), int(b)) for a, b in (x.split("|") for x in res.stdout.split()))
            break
        time.sleep(2)
    if rows is None:
        print(json.dumps({"error": "the primary could not be read after the drill"}))
        return 1
    lost = sorted(n for n in acked if n not in rows)
    duplicates = sorted(n for n, c in rows.items() if c > 1)
    print(
        json.dumps(
            {
                "attempts": attempts,
                "failed_attempts": failed,
                "acknowledged": len(acked),
                "rows": len(rows),
                "lost": lost,
                "duplicates": duplicates,
                "writable_after_s": None
                if first_after is None
                else round(first_after - args.kill_at, 2),
                "acknowledged_after_failover": acked_after,
            }
        )
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["write", "report"])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--table", default="failover_drill")
    parser.add_argument("--stop", default="")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=5)
    parser.add_argument("--kill-at", type=float, default=0)
    args = parser.parse_args()
    if not args.run.replace("-", "").isalnum() or not args.table.replace("_", "").isalnum():
        parser.error("--run and --table take letters, digits, - and _ only")
    return write(args) if args.mode == "write" else report(args)


if __name__ == "__main__":
    sys.exit(main())
