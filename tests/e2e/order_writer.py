"""An order writer for day-two tests: one customer posting orders through the edge while
the data tier is changed underneath (an etcd outage, a rolling restart).

It is what a client sees: every POST /orders goes through https://127.0.0.1:8443 with an
Idempotency-Key and counts as served (201) or failed (any other status, a transport error).
The orders the API acknowledged are kept so a test can check afterwards that the
database holds each one (`missing`).

The edge allows one client address 100 requests a minute (burst 20) and every test
process calls from the controller's address: one order every PACE_S keeps this writer at
40 a minute, leaving the rest to the other process's tests. Bounded by `limit_s`.
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
    def __init__(self, limit_s: float = 300) -> None:
        self.limit_s = limit_s
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
            while not self._stop.is_set() and time.monotonic() < deadline:
                sent = time.strftime("%H:%M:%S")
                try:
                    r = c.post(
                        "/orders",
                        json=body,
                        headers={**self._headers, "Idempotency-Key": uuid.uuid4().hex},
                    )
                    self.status[str(r.status_code)] += 1
                    if r.status_code == 201:
                        self.acknowledged.append(str(r.json()["id"]))
                    else:
                        self.failures.append(f"{sent} {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.status[type(exc).__name__] += 1
                    self.failures.append(f"{sent} {exc!r}")
                self._stop.wait(PACE_S)

    def __enter__(self) -> OrderWriter:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.seconds = time.monotonic() - self._started

    @property
    def served(self) -> int:
        return self.status["201"]

    @property
    def failed(self) -> int:
        return sum(self.status.values()) - self.served

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
        query = f"SELECT id FROM orders WHERE id IN ({ids})"
        for db in lab.groups["postgres"]:
            out = lab.ssh(
                db,
                "runuser -u postgres -- psql -d zapora -tAc "
                f'"SELECT pg_is_in_recovery()" -c "{query}"',
                check=False,
            )
            lines = out.stdout.split()
            if out.returncode == 0 and lines and lines[0] == "f":
                return sorted(set(self.acknowledged) - set(lines[1:]))
        raise AssertionError("no primary answered the check of the acknowledged orders")
