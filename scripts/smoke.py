#!/usr/bin/env python3
"""`make smoke URL=...`: a customer's journey through the edge, after a deploy to staging.

    scripts/smoke.py URL [--ca FILE]

Steps, each with its own deadline: the API ready (`/health/ready` 200), sign in, read the
menu (`/menu-items?available=true`), place an order of the first available item (with an
Idempotency-Key) and read it back; the order's total must be the item's price times the
quantity. Any other answer (a 5xx, a 4xx, a wrong body, no answer) fails the step: the
script prints which step, the status and the body, and exits 1. It sends about six
requests, so the edge's rate limit (100 r/min per address) is never near.

The account: ZAPORA_SMOKE_EMAIL and ZAPORA_SMOKE_PASSWORD (a customer kept for this; the CD
workflow passes them as secrets). Without them the script registers a new customer,
`smoke-<random>@<ZAPORA_SMOKE_DOMAIN>` (default zapora.example.com), as the lab allows.
The menu must hold at least one available item: smoke places an order, it does not create
menus. --ca adds a CA file to the system's trusted roots (the lab's edge CA).
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import uuid
from typing import Any

import httpx

QUANTITY = 2
TIMEOUT_S = 15


class SmokeFailed(Exception):
    pass


def _check(step: str, r: httpx.Response, expected: int) -> Any:
    if r.status_code != expected:
        raise SmokeFailed(
            f"{step}: {r.request.method} {r.request.url.path} answered {r.status_code}, "
            f"expected {expected}: {r.text[:300]}"
        )
    try:
        return r.json()
    except ValueError as exc:
        raise SmokeFailed(f"{step}: the answer is not JSON: {r.text[:300]}") from exc


def _account(c: httpx.Client) -> tuple[str, str]:
    email = os.environ.get("ZAPORA_SMOKE_EMAIL", "")
    password = os.environ.get("ZAPORA_SMOKE_PASSWORD", "")
    if email and password:
        return email, password
    domain = os.environ.get("ZAPORA_SMOKE_DOMAIN", "zapora.example.com")
    email = f"smoke-{uuid.uuid4().hex[:12]}@{domain}"
    password = uuid.uuid4().hex
    r = c.post("/auth/register", json={"email": email, "password": password, "full_name": "Smoke"})
    _check("register a smoke customer", r, 201)
    return email, password


def smoke(c: httpx.Client) -> str:
    _check("ready", c.get("/health/ready"), 200)
    email, password = _account(c)
    token = _check(
        "sign in", c.post("/auth/login", json={"email": email, "password": password}), 200
    )
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    menu = _check("read the menu", c.get("/menu-items", params={"available": "true"}), 200)
    items = menu.get("items") or []
    if not items:
        raise SmokeFailed("read the menu: no available menu item to order (add one to the menu)")
    item = items[0]
    placed = _check(
        "place an order",
        c.post(
            "/orders",
            json={"items": [{"menu_item_id": item["id"], "quantity": QUANTITY}]},
            headers={**auth, "Idempotency-Key": uuid.uuid4().hex},
        ),
        201,
    )
    read = _check("read the order", c.get(f"/orders/{placed['id']}", headers=auth), 200)
    want = item["price_minor"] * QUANTITY
    if read.get("id") != placed["id"] or read.get("total_minor") != want:
        raise SmokeFailed(
            f"read the order: expected order {placed['id']} with total {want}, got {read}"
        )
    return f"order {placed['id']}: {QUANTITY} x {item['name']} = {want} {read.get('currency')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the API through the edge, e.g. https://127.0.0.1:8443")
    parser.add_argument("--ca", help="a CA file trusted besides the system's")
    args = parser.parse_args(argv)
    tls = ssl.create_default_context()
    if args.ca:
        tls.load_verify_locations(cafile=args.ca)
    try:
        with httpx.Client(base_url=args.url, verify=tls, timeout=TIMEOUT_S) as c:
            done = smoke(c)
    except SmokeFailed as exc:
        print(f"smoke FAILED at {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"smoke FAILED: {args.url} did not answer: {exc!r}", file=sys.stderr)
        return 1
    print(f"smoke ok against {args.url}: {done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
