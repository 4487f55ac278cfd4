"""`make bench`: the API under gunicorn against local PostgreSQL and Redis, loaded with wrk.

Prints req/s, p50 and p99 for GET /menu-items (cached), GET /orders/{id}, POST /orders, the
same for a bare constant-JSON endpoint under the same server settings (the ceiling), p99 of
GET /menu-items at half its peak rate, and the RSS of each gunicorn worker. All traffic goes
to 127.0.0.1, and every run is bounded in time (about two minutes in all).

GET /menu-items and the ceiling are measured in alternating rounds (median reported), so that
other load on the machine affects both alike.

Beside the server's CPU per request it prints PostgreSQL's (postmaster and backends) and
Redis's, per request of the same run.

Environment: BENCH_SECONDS (default 10), BENCH_ROUNDS (3), BENCH_CONNECTIONS (32),
ZAPORA_WORKERS (2), BENCH_TLS (1: PostgreSQL and Redis speak TLS 1.3 only and the API
verifies them, sslmode=verify-full and ZAPORA_REDIS_TLS_CA_FILE, as on the hosts).
PostgreSQL runs with its durable defaults (fsync on), unlike the test suite's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import psycopg

REPO = Path(__file__).resolve().parents[1]
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
WORKERS = os.environ.get("ZAPORA_WORKERS", "2")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
PASSWORD = "benchmark password"
TLS = os.environ.get("BENCH_TLS", "") == "1"


def _servers_module() -> Any:
    # The test harness is the one place that knows how to start PostgreSQL and Redis.
    spec = importlib.util.spec_from_file_location("zapora_servers", REPO / "tests/app/servers.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["zapora_servers"] = module
    spec.loader.exec_module(module)
    return module


def seed(dsn: str) -> dict[str, str]:
    password_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (email, password_hash, full_name) VALUES (%s, %s, 'Bench')",
            ("bench@example.com", password_hash),
        )
        row = conn.execute("INSERT INTO menus (name) VALUES ('Bench') RETURNING id").fetchone()
        assert row
        menu_id = row[0]
        item_ids = []
        for n in range(20):
            item = conn.execute(
                "INSERT INTO menu_items (menu_id, name, description, price_minor, currency)"
                " VALUES (%s, %s, 'A dish', %s, 'EUR') RETURNING id",
                (menu_id, f"Dish {n:02d}", 500 + n * 10),
            ).fetchone()
            assert item
            item_ids.append(str(item[0]))
    return {"menu_id": str(menu_id), "item_a": item_ids[0], "item_b": item_ids[1]}


def gunicorn(
    app: str, port: int, env: dict[str, str], metrics_dir: Path
) -> subprocess.Popen[bytes]:
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "python:zapora.gunicorn_conf", app],
        env={
            **os.environ,
            **env,
            "ZAPORA_BIND": f"127.0.0.1:{port}",
            # Each server's own Prometheus listener, on a free port.
            "ZAPORA_METRICS_PORT": str(_free_port()),
            "ZAPORA_WORKERS": WORKERS,
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        },
        cwd=REPO / "bench",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # A worker's imports alone take 20 s on a 2-core machine at load average 20.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{app} did not start")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wrk(
    url: str,
    script: Path | None = None,
    headers: dict[str, str] | None = None,
    seconds: int = SECONDS,
) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run(
        [*cmd, url], capture_output=True, text=True, check=True, timeout=seconds + 30
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    requests = re.search(r"(\d+) requests in", out)
    return {
        "requests": float(requests.group(1)) if requests else 0.0,
        "socket_errors": float(sum(int(n) for n in sockets.groups())) if sockets else 0.0,
        "rps": rps,
        "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "errors": float(non2xx.group(1)) if non2xx else 0.0,
    }


def post_orders_script(
    path: Path,
    token: str,
    ids: dict[str, str],
    items: list[dict[str, Any]] | None = None,
    prelude: str = "",
) -> Path:
    """A wrk script that places an order per request, each with its own Idempotency-Key.

    `items` defaults to two lines (item a x2, item b x1); `prelude` is Lua put before the
    request function (e.g. pace()'s delay).
    """
    if items is None:
        items = [
            {"menu_item_id": ids["item_a"], "quantity": 2},
            {"menu_item_id": ids["item_b"], "quantity": 1},
        ]
    body = json.dumps({"items": items})
    path.write_text(
        prelude + "local n = 0\n"
        f"local prefix = '{uuid.uuid4().hex}'\n"
        "request = function()\n"
        "  n = n + 1\n"
        "  return wrk.format('POST', '/orders', {\n"
        f"    ['Authorization'] = 'Bearer {token}',\n"
        "    ['Content-Type'] = 'application/json',\n"
        "    ['Idempotency-Key'] = prefix .. '-' .. n}, "
        f"'{body}')\n"
        "end\n"
    )
    return path


def pace(rate: float) -> str:
    """A wrk delay() so that all connections together offer `rate` requests/s."""
    return f"delay = function() return {CONNECTIONS * 1000 / rate:.3f} end\n"


@dataclass
class Api:
    """The API under gunicorn on local PostgreSQL and Redis, migrated and seeded."""

    servers: Any
    proc: subprocess.Popen[bytes]
    base: str
    token: str
    ids: dict[str, str]
    env: dict[str, str]
    tmp: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextmanager
def api_server(prefix: str, tls: bool = False, **extra_env: str) -> Iterator[Api]:
    """Start PostgreSQL (durable) and Redis, migrate, seed, run the API under gunicorn with
    production settings and sign the bench customer in; everything stops on exit.

    The per-user write limit stays on (its Redis round trip is paid) but high enough that the
    load is not answered 429. With `tls`, PostgreSQL and Redis speak TLS 1.3 only and the API
    verifies them. `extra_env` adds to or overrides the API's environment.
    """
    servers_mod = _servers_module()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    secret = tmp / "jwt"
    secret.write_text(secrets.token_hex(32))
    try:
        with servers_mod.started(durable=True, tls=tls) as servers:
            from zapora.migrate import upgrade

            upgrade(servers.primary.dsn())
            ids = seed(servers.primary.dsn())
            env = {
                "ZAPORA_ENVIRONMENT": "production",
                "ZAPORA_DATABASE_URL": servers.primary.dsn(),
                "ZAPORA_REDIS_URL": servers.redis_url,
                "ZAPORA_JWT_SECRET_FILE": str(secret),
                "ZAPORA_LOG_LEVEL": "INFO",
                "ZAPORA_USER_WRITE_LIMIT_PER_MINUTE": "100000000",
                **extra_env,
            }
            if servers.ca:
                env["ZAPORA_REDIS_TLS_CA_FILE"] = str(servers.ca)
            print(f"TLS to PostgreSQL and Redis: {'on' if servers.ca else 'off'}")
            port = servers_mod.free_port()
            base = f"http://127.0.0.1:{port}"
            proc = gunicorn("zapora.api.app:create_app()", port, env, tmp / "prom-api")
            try:
                token = httpx.post(
                    base + "/auth/login",
                    json={"email": "bench@example.com", "password": PASSWORD},
                ).json()["access_token"]
                yield Api(servers, proc, base, token, ids, env, tmp)
            finally:
                proc.terminate()
                proc.wait(30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cpu_seconds(master: int) -> float:
    """User+system CPU of the master and its workers: a cost that other load cannot inflate."""
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [str(master), *Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # a child that exited meanwhile (a PostgreSQL backend closed by its pool)
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


# PostgreSQL's postmaster and Redis: their CPU per request is printed beside the server's
# (set in main), to show where a request's time goes besides the API's own processes.
BACKENDS: list[int] = []


def measured(master: int, url: str, **kwargs: Any) -> dict[str, float]:
    before = cpu_seconds(master)
    backends_before = sum(cpu_seconds(pid) for pid in BACKENDS)
    result = wrk(url, **kwargs)
    seconds = int(kwargs.get("seconds", SECONDS))
    requests = result["rps"] * seconds
    result["cpu_us_per_req"] = (cpu_seconds(master) - before) / requests * 1e6
    backends = sum(cpu_seconds(pid) for pid in BACKENDS) - backends_before
    result["backend_cpu_us_per_req"] = backends / requests * 1e6
    return result


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median req/s, so its latencies belong to the same run."""
    return sorted(runs, key=lambda run: run["rps"])[len(runs) // 2]


def _ms(value: str) -> float:
    number = float(re.match(r"[\d.]+", value).group(0))  # type: ignore[union-attr]
    unit = value[len(re.match(r"[\d.]+", value).group(0)) :]  # type: ignore[union-attr]
    return number * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def worker_rss_mb(master: int) -> list[float]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    sizes = []
    for pid in children:
        status = Path(f"/proc/{pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        if match:
            sizes.append(round(int(match.group(1)) / 1024, 1))
    return sizes


def main() -> int:
    if shutil.which("wrk") is None:
        print("wrk is missing: `apt-get install wrk` (make setup installs it)", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    with api_server("zapora-bench-", tls=TLS) as api:
        primary = api.servers.primary.proc
        assert primary is not None
        BACKENDS[:] = [primary.pid, api.servers.redis_proc.pid]
        ceiling_port = _free_port()
        ceiling_url = f"http://127.0.0.1:{ceiling_port}/constant"
        # The ceiling serves the very bytes of the list response.
        payload = api.tmp / "menu-items.json"
        payload.write_bytes(httpx.get(api.base + "/menu-items").content)
        # Both servers stay up; idle workers cost nothing. Rounds alternate between them so
        # that load from other processes on the machine skews both sides alike.
        ceiling = gunicorn(
            "ceiling_app:create_app()",
            ceiling_port,
            {**api.env, "BENCH_CEILING_PAYLOAD": str(payload)},
            api.tmp / "prom-ceiling",
        )
        try:
            order = httpx.post(
                api.base + "/orders",
                json={"items": [{"menu_item_id": api.ids["item_a"], "quantity": 2}]},
                headers=api.auth,
            ).json()
            script = post_orders_script(api.tmp / "post_orders.lua", api.token, api.ids)
            # Warm-up: caches, pools, bytecode.
            wrk(api.base + "/menu-items", seconds=2)
            wrk(ceiling_url, seconds=2)
            rounds: dict[str, list[dict[str, float]]] = {"menu": [], "ceiling": []}
            for _ in range(ROUNDS):
                rounds["ceiling"].append(measured(ceiling.pid, ceiling_url))
                rounds["menu"].append(measured(api.proc.pid, api.base + "/menu-items"))
            results["ceiling GET /constant"] = _median(rounds["ceiling"])
            results["GET /menu-items (cached)"] = _median(rounds["menu"])
            results["GET /orders/{id}"] = measured(
                api.proc.pid, f"{api.base}/orders/{order['id']}", headers=api.auth
            )
            results["POST /orders"] = measured(api.proc.pid, api.base + "/orders", script=script)
            peak = results["GET /menu-items (cached)"]["rps"]
            # Half load: each connection waits so that all together offer peak/2 req/s.
            half = api.tmp / "pace.lua"
            half.write_text(pace(peak / 2))
            results["GET /menu-items at half peak"] = wrk(api.base + "/menu-items", script=half)
            results["worker RSS MB"] = worker_rss_mb(api.proc.pid)
            results["ceiling bytes"] = len(payload.read_bytes())
        finally:
            ceiling.terminate()
            ceiling.wait(30)

    print(
        f"workers={WORKERS} connections={CONNECTIONS} seconds={SECONDS} rounds={ROUNDS}"
        f" cores={os.cpu_count()} load average={os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'endpoint':34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}"
        f" {'server CPU us/req':>18} {'PostgreSQL+Redis CPU us/req':>28}"
    )
    for name, row in results.items():
        if isinstance(row, dict):
            cpu = row.get("cpu_us_per_req")
            backend = row.get("backend_cpu_us_per_req")
            print(
                f"{name:34} {row['rps']:9.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f}"
                f" {row['errors']:8.0f} {'' if cpu is None else f'{cpu:18.0f}'}"
                f" {'' if backend is None else f'{backend:28.0f}'}"
            )
    ratio = results["GET /menu-items (cached)"]["rps"] / results["ceiling GET /constant"]["rps"]
    print(
        f"ceiling payload = {results['ceiling bytes']} bytes (the cached list's body)\n"
        f"cached GET /menu-items = {ratio:.0%} of the ceiling's req/s (goal >= 60%)"
    )
    # Issue 19: the routed handlers (no second code path) against the ceiling.
    for name, goal in (("GET /orders/{id}", 0.15), ("POST /orders", 0.08)):
        share = results[name]["rps"] / results["ceiling GET /constant"]["rps"]
        cpu_share = (
            results["ceiling GET /constant"]["cpu_us_per_req"] / results[name]["cpu_us_per_req"]
        )
        print(
            f"{name} = {share:.1%} of the ceiling's req/s (goal >= {goal:.0%});"
            f" by server CPU per request {cpu_share:.1%}"
        )
    cpu_ratio = (
        results["ceiling GET /constant"]["cpu_us_per_req"]
        / results["GET /menu-items (cached)"]["cpu_us_per_req"]
    )
    print(
        f"by server CPU per request (what req/s tracks on an otherwise idle machine):"
        f" {cpu_ratio:.0%} of the ceiling"
    )
    print(
        f"p99 at half peak = {results['GET /menu-items at half peak']['p99_ms']:.2f} ms"
        " (goal < 25 ms)"
    )
    print(f"worker RSS MB = {results['worker RSS MB']} (goal <= 120)")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
