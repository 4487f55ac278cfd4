"""Load through the edge from the edge host itself: wrk on the lab's edge against
https://127.0.0.1, for tests and benches that need more than the edge's 100 requests a
minute per client (the lab exempts only the edge host's loopback, inventory/lab).

Every request still passes the edge's TLS, WAF and upstreams. Two shapes:
- `login`: POST /auth/login of one customer (bcrypt: CPU-heavy on the API replicas),
  optionally paced (`delay_ms` between a connection's requests, wrk's `delay()` hook);
- `get`: GET of a path (the cached menu list: cheap).
Each run is bounded by `seconds` and prints wrk's own summary, parsed into `WrkResult`.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass

from tests.e2e.conftest import Lab, api_client

INSTALL_WRK = (
    "command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk"
)


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    raw: str

    @property
    def failed(self) -> int:
        return self.non_2xx + self.socket_errors


def _ms(value: str) -> float:
    """wrk's latency ("812.00us", "1.23ms", "2.01s", "1.02m") in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        raise AssertionError(f"unknown wrk latency {value!r}")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    done = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", out)
    if not done:
        raise AssertionError(f"wrk printed no summary:\n{out}")
    seconds = float(done.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[done.group(3)]
    p99 = re.search(r"^\s*99%\s+(\S+)", out, re.MULTILINE)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return WrkResult(
        requests=int(done.group(1)),
        seconds=seconds,
        rps=float(rps.group(1)) if rps else 0.0,
        p99_ms=_ms(p99.group(1)) if p99 else float("nan"),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
        raw=out,
    )


def load_customer() -> dict[str, str]:
    """A fresh customer for the login load (registered through the edge, one request)."""
    email = f"e2e-load-{uuid.uuid4().hex[:8]}@zapora.example.com"
    password = "e2e load password"
    with api_client() as c:
        r = c.post("/auth/register", json={"email": email, "password": password, "full_name": "L"})
        assert r.status_code == 201, r.text
    return {"email": email, "password": password}


class EdgeLoad:
    """wrk on the edge host in a background thread; `result` once it has finished."""

    def __init__(
        self,
        lab: Lab,
        *,
        seconds: int,
        connections: int,
        login: dict[str, str] | None = None,
        path: str = "/menu-items",
        delay_ms: int = 0,
    ) -> None:
        self.lab = lab
        self.edge = lab.groups["edge"][0]
        self.result: WrkResult | None = None
        self.error: str | None = None
        script = []
        if login is not None:
            path = "/auth/login"
            body = json.dumps(login).replace("'", "")
            script += [
                'wrk.method = "POST"',
                f"wrk.body = '{body}'",
                'wrk.headers["Content-Type"] = "application/json"',
            ]
        if delay_ms:
            script += [f"function delay() return {int(delay_ms)} end"]
        name = f"/root/zapora-load-{uuid.uuid4().hex[:6]}.lua"
        lua = "\n".join(script) + "\n"
        self.command = (
            f"{INSTALL_WRK} && cat > {name} <<'EOF'\n{lua}EOF\n"
            f"wrk -t1 -c{connections} -d{seconds}s --timeout 30s --latency -s {name} "
            f"https://127.0.0.1{path}; rc=$?; rm -f {name}; exit $rc"
        )
        self.seconds = seconds
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        out = self.lab.ssh(self.edge, self.command, check=False, timeout=self.seconds + 300)
        try:
            self.result = parse_wrk(out.stdout)
        except AssertionError as exc:
            self.error = f"{exc}\n{out.stderr[-2000:]}"

    def start(self) -> EdgeLoad:
        self._thread.start()
        return self

    def wait(self) -> WrkResult:
        self._thread.join(timeout=self.seconds + 330)
        assert self.result is not None, self.error or "wrk did not finish"
        return self.result
