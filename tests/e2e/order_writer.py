"""An order writer for day-two tests: one customer posting orders through the edge while
the data tier is changed underneath (an etcd outage, a rolling restart).

It is what a client sees: every POST /orders goes through https://127.0.0.1:8443 with an
Idempotency-Key and counts as served (201) or failed (any other status, a transport error).
The orders the API acknowledged are kept so a test can check afterwards that the
database holds each one (`missing`).

The edge allows one client address 100 requests a minute (burst 20) and every test
process calls from the controller's address: one order every PACE_S keeps this writer at
40 a minute, leaving the rest to the other process's tests. Bounded by `limit_s`.

With `retry_key=True` it is a client that must get its order through: it sends each
Idempotency-Key again (after `retry_s`, or the Retry-After of a 429) until the API
acknowledges it, and only then takes a new key. `waits` holds, per key, the seconds from
its first send to its acknowledgement (`longest_wait`); `doubled()` counts orders the
database holds beyond the acknowledged ones (a retried key that made a second order).
bench/failover.py runs four of these through a fault; tests/e2e/test_failover.py one.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import httpx

from tests.e2e.conftest import Lab, api_client, new_customer, new_menu_item

PACE_S = 1.5


class OrderWriter:
    def __init__(
        self,
        limit_s: float = 300,
        *,
        pace_s: float = PACE_S,
        retry_key: bool = False,
        retry_s: float = 1.0,
        timeout_s: float = 30.0,
    ) -> None:
        self.limit_s = limit_s
        self.pace_s = pace_s
        self.retry_key = retry_key
        self.retry_s = retry_s
        self.timeout_s = timeout_s
        # Per key (retry_key): (monotonic time of its first send, seconds until acknowledged).
        self.waits: list[tuple[float, float]] = []
        self.user_id = ""
        self.status: Counter[str] = Counter()
        self.failures: list[str] = []
        self.acknowledged: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._headers, self._item = self._customer()

    @staticmethod
    def _customer() -> tuple[dict[str, str], str]:
        """A menu item to order (made as admin) and a fresh customer's bearer header."""
        with api_client() as c:
            return new_customer(c, "e2e-writer"), str(new_menu_item(c, "e2e writer")["id"])

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        body = {"items": [{"menu_item_id": self._item, "quantity": 1}]}
        with api_client() as c:
            c.timeout = httpx.Timeout(self.timeout_s)
            key, first_sent = uuid.uuid4().hex, time.monotonic()
            # A key in flight when the writer is stopped is still seen through (retry_key),
            # so every order the database holds was acknowledged or counts as doubled.
            while time.monotonic() < deadline and not (
                self._stop.is_set() and (not self.retry_key or key is None)
            ):
                if key is None:
                    key, first_sent = uuid.uuid4().hex, time.monotonic()
                sent = time.strftime("%H:%M:%S")
                pause = self.pace_s
                try:
                    r = c.post(
                        "/orders", json=body, headers={**self._headers, "Idempotency-Key": key}
                    )
                    self.status[str(r.status_code)] += 1
                    if r.status_code == 201:
                        self.acknowledged.append(str(r.json()["id"]))
                        self.user_id = str(r.json()["user_id"])
                        self.waits.append((first_sent, time.monotonic() - first_sent))
                        key = None
                    else:
                        self.failures.append(f"{sent} {r.status_code} {r.text[:200]}")
                        if self.retry_key:
                            pause = float(r.headers.get("Retry-After") or self.retry_s)
                except httpx.HTTPError as exc:
                    self.status[type(exc).__name__] += 1
                    self.failures.append(f"{sent} {exc!r}")
                    pause = self.retry_s if self.retry_key else pause
                if not self.retry_key:
                    key = None
                if key is None:
                    self._stop.wait(pause)
                else:
                    time.sleep(pause)  # a retry goes out even when stopping

    def __enter__(self) -> OrderWriter:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.limit_s if self.retry_key else 30)
        self.seconds = time.monotonic() - self._started

    @property
    def served(self) -> int:
        return self.status["201"]

    @property
    def failed(self) -> int:
        return sum(self.status.values()) - self.served

    @property
    def longest_wait(self) -> float:
        """The longest a key waited from its first send to its acknowledgement (retry_key)."""
        return max((w for _, w in self.waits), default=0.0)

    def summary(self) -> str:
        return (
            f"{sum(self.status.values())} orders in {self.seconds:.0f} s: {self.served} "
            f"acknowledged, {self.failed} failed {dict(self.status)}"
        )

    def missing(self, lab: Lab) -> list[str]:
        """Acknowledged orders the database does not hold, asked on the primary."""
        if not self.acknowledged:
            return []
        ids = ",".join(f"'{i}'" for i in self.acknowledged)
        return sorted(
            set(self.acknowledged)
            - set(_on_primary(lab, f"SELECT id FROM orders WHERE id IN ({ids})"))
        )

    def doubled(self, lab: Lab) -> int:
        """Orders of this writer's customer that the database holds beyond the acknowledged
        ones: a retried key that made a second order (0 when nothing was acknowledged)."""
        if not self.user_id:
            return 0
        held = _on_primary(lab, f"SELECT id FROM orders WHERE user_id = '{self.user_id}'")
        return len(set(held) - set(self.acknowledged))


def _on_primary(lab: Lab, query: str) -> list[str]:
    """The rows (one column) `query` returns on the PostgreSQL primary, asked over SSH."""
    for db in lab.groups["postgres"]:
        out = lab.ssh(
            db,
            f'runuser -u postgres -- psql -d zapora -tAc "SELECT pg_is_in_recovery()" -c "{query}"',
            check=False,
        )
        lines = out.stdout.split()
        if out.returncode == 0 and lines and lines[0] == "f":
            return lines[1:]
    raise AssertionError("no primary answered the check of the acknowledged orders")
