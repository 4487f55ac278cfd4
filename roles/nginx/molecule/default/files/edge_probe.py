"""Client-side checks of the Zapora edge, run from the probe containers. Each command
prints one JSON object and exits 1 when a check fails, naming it."""

from __future__ import annotations

import argparse
import http.client
import json
import re
import socket
import ssl
import sys
import threading
import time
import urllib.request

FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    if not ok:
        FAILURES.append(what)


def context(ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False  # the probe reaches the edge by address
    return ctx


def request(args, method="GET", path="/", body=None, headers=None, conn=None):
    own = conn is None
    if own:
        conn = http.client.HTTPSConnection(args.host, args.port, context=context(args.ca), timeout=10)
    hdrs = {"Accept": "application/json", **(headers or {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    raw = resp.read()
    if own:
        conn.close()
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = raw.decode(errors="replace")
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload


def header_problems(status, headers, expected) -> list[str]:
    problems = [f"{status}: {name} is {headers.get(name.lower())!r}, want {value!r}"
                for name, value in expected.items() if headers.get(name.lower()) != value]
    if "cache-control" not in headers:
        problems.append(f"{status}: no Cache-Control")
    if "x-powered-by" in headers:
        problems.append(f"{status}: X-Powered-By passed through")
    if headers.get("server", "nginx") != "nginx":
        problems.append(f"{status}: Server is {headers.get('server')!r} (version shown?)")
    if "x-request-id" not in headers:
        problems.append(f"{status}: no X-Request-ID")
    return problems


def cmd_headers(args) -> dict:
    expected = json.loads(args.expect)
    seen = {}
    for path, want in (("/menus", 200), ("/_test/status/404", 404), ("/_test/close", 502)):
        status, headers, payload = request(args, path=path)
        check(status == want, f"{path}: status {status}, want {want}")
        for p in header_problems(status, headers, expected):
            check(False, p)
        seen[str(status)] = sorted(headers)
        if status == 502:
            check(headers.get("content-type") == "application/problem+json",
                  f"502 content-type {headers.get('content-type')}")
            check(isinstance(payload, dict) and payload.get("status") == 502, f"502 body {payload!r}")
            check(headers.get("cache-control", "").startswith("no-store"), "502 without Cache-Control: no-store")
    # Request id: passed through when well-formed, generated otherwise; traceparent forwarded.
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    status, headers, payload = request(args, path="/menus", headers={"X-Request-ID": "probe-42", "traceparent": tp})
    check(headers.get("x-request-id") == "probe-42", "X-Request-ID not echoed back")
    check(payload["headers"].get("x-request-id") == "probe-42", "X-Request-ID not sent upstream")
    check(payload["headers"].get("traceparent") == tp, "traceparent not passed upstream")
    status, headers, payload = request(args, path="/menus", headers={"X-Request-ID": "bad id;<script>"})
    generated = headers.get("x-request-id", "")
    check(len(generated) == 32 and payload["headers"].get("x-request-id") == generated,
          f"malformed X-Request-ID not replaced: {generated!r}")
    return {"statuses_checked": sorted(seen), "request_id_generated": generated}


def cmd_waf(args) -> dict:
    jwt = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI3ZjNlOGM1Mi0xYjJhLTRjOWQtOGUxZi0zYTJiNGM1ZDZlN2YiLCJyb2xlIjoiY3VzdG9tZXIiLCJleHAiOjE3OTk5OTk5OTl9"
           ".Xq3-_vL8kP2mN9sT4wY7zA1bC6dE0fG5hJ8iK-_uR2o")
    bearer = {"Authorization": f"Bearer {jwt}"}
    item = "0b7e3c1a-9d2f-4e5b-8a6c-1f2e3d4c5b6a"
    order = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"
    api_calls = [
        ("POST", "/auth/register", {"email": "zoe.obrien@example.org", "password": "Tr0ub4dor&3' OR -- x!", "full_name": "Zoë O'Brien"}, {}),
        ("POST", "/auth/login", {"email": "zoe.obrien@example.org", "password": "select * from; drop--'\"<>"}, {}),
        ("POST", "/auth/refresh", {"refresh_token": jwt}, {}),
        ("GET", "/users/me", None, bearer),
        ("GET", "/menus?limit=20&offset=0", None, bearer),
        ("GET", "/menu-items?menu_id=" + item + "&q=pizza%20margherita&limit=50", None, bearer),
        ("POST", "/menus", {"name": "Lunch & Dinner", "description": "Our chef's picks - updated daily (vegan options)."}, bearer),
        ("PATCH", f"/menu-items/{item}", {"price_minor": 1250, "currency": "EUR", "description": "Tomato, mozzarella, basil"}, bearer),
        ("POST", "/orders", {"items": [{"menu_item_id": item, "quantity": 2}], "notes": "Ring twice; no onions, please! Gate code #4421."}, bearer),
        ("PATCH", f"/orders/{order}/status", {"status": "preparing"}, bearer),
        ("POST", f"/orders/{order}/cancel", {}, bearer),
        ("DELETE", f"/menus/{order}", None, bearer),
        ("GET", "/audit-events?action=order.created&limit=10", None, bearer),
        ("POST", "/auth/logout", None, bearer),
    ]
    passed = []
    for method, path, body, headers in api_calls:
        status, _, _ = request(args, method=method, path=path, body=body, headers=headers)
        check(status == 200, f"WAF false positive? {method} {path} -> {status}")
        passed.append(f"{method} {path.split('?')[0]} {status}")
    attacks = [
        ("sql-injection", "/menus?q=1%27%20OR%20%271%27%3D%271%27%20--%20"),
        ("sql-injection-union", "/menu-items?q=1%20UNION%20SELECT%20password%20FROM%20users"),
        ("path-traversal", "/menus?file=..%2F..%2F..%2F..%2Fetc%2Fpasswd"),
        ("path-traversal-path", "/static/..%2f..%2f..%2fetc%2fpasswd"),
    ]
    blocked = {}
    for name, path in attacks:
        status, headers, payload = request(args, path=path)
        blocked[name] = status
        # nginx itself refuses a path that climbs above the root (400) before the WAF sees it.
        want = (400, 403) if name == "path-traversal-path" else (403,)
        check(status in want, f"{name}: {status}, want {want}")
        check(headers.get("content-type") == "application/problem+json", f"{name}: body not problem+json")
    return {"api_calls_passed": passed, "attacks": blocked}


def cmd_ratelimit(args) -> dict:
    expected = json.loads(args.expect)
    conn = http.client.HTTPSConnection(args.host, args.port, context=context(args.ca), timeout=10)
    counts: dict[str, int] = {}
    retry_after = set()
    start = time.monotonic()
    for _ in range(args.count):
        status, headers, payload = request(args, path="/menus", conn=conn)
        counts[str(status)] = counts.get(str(status), 0) + 1
        if status == 429:
            retry_after.add(headers.get("retry-after"))
            if counts["429"] == 1:
                for p in header_problems(status, headers, expected):
                    check(False, p)
                check(headers.get("content-type") == "application/problem+json", "429 not problem+json")
                check(isinstance(payload, dict) and payload.get("status") == 429, f"429 body {payload!r}")
    elapsed = time.monotonic() - start
    conn.close()
    # Straight after: a forged X-Forwarded-For must land in the same (empty) bucket.
    forged, _, _ = request(args, path="/menus", headers={"X-Forwarded-For": "203.0.113.77"})
    check(forged == 429, f"forged X-Forwarded-For got {forged}, want 429")
    check(counts.get("429", 0) >= 20, f"only {counts.get('429', 0)} x 429 of {args.count}")
    check(retry_after and None not in retry_after, f"429 without Retry-After: {retry_after}")
    return {
        "sent": args.count,
        "seconds": round(elapsed, 2),
        "statuses": counts,
        "retry_after": sorted(map(str, retry_after)),
        "forged_xff_status": forged,
    }


def cmd_single(args) -> dict:
    headers = {"X-Forwarded-For": args.xff, "X-Real-IP": args.xff} if args.xff else {}
    status, hdrs, payload = request(args, path=args.path, headers=headers)
    if args.want:
        check(status == args.want, f"{args.path}: status {status}, want {args.want}")
    colour = payload.get("colour") if isinstance(payload, dict) else None
    return {"status": status, "colour": colour, "location": hdrs.get("location")}


def cmd_loop(args) -> dict:
    """Sequential requests, a new connection each, until --until has answered for 2 s (at
    most --seconds); counts the colours that answered and every failed request."""
    colours: dict[str, int] = {}
    failures: list[str] = []
    end = time.monotonic() + args.seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        try:
            status, _, payload = request(args, path="/menus")
            if status != 200:
                failures.append(str(status))
            else:
                colours[payload["colour"]] = colours.get(payload["colour"], 0) + 1
                if payload["colour"] == args.until and end - time.monotonic() > 2:
                    end = time.monotonic() + 2
        except (OSError, http.client.HTTPException) as exc:
            failures.append(type(exc).__name__)
        time.sleep(0.02)
    check(not failures, f"failed requests during the loop: {failures[:10]}")
    check(args.until in colours, f"{args.until} never answered in {args.seconds} s")
    return {"requests": n, "colours": colours, "failed_requests": len(failures)}


def scrape(url: str) -> dict[tuple[str, str], float]:
    """zapora_edge_http_responses_total by (status, colour), and the histogram's count
    summed over colours under ("count", "")."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = re.match(r'^zapora_edge_http_responses_total\{(.*)\} (\S+)$', line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            out[(labels["status"], labels["colour"])] = float(m.group(2))
        m = re.match(r'^zapora_edge_http_request_duration_seconds_count\{.*\} (\S+)$', line)
        if m:
            out[("count", "")] = out.get(("count", ""), 0.0) + float(m.group(1))
    return out


def cmd_counters(args) -> dict:
    """Send requests that answer 200 (upstream, blue), 404 (upstream) and 429 (the limit,
    answered by nginx: colour none), then check that mtail's counters moved by exactly
    what this client saw."""
    before = scrape(args.metrics)
    conn = http.client.HTTPSConnection(args.host, args.port, context=context(args.ca), timeout=10)
    sent: dict[tuple[str, str], int] = {}

    def send(path: str) -> int:
        status, _, payload = request(args, path=path, conn=conn)
        # The echo server names its colour; nginx's own answers (problem+json) do not.
        colour = payload.get("colour", "none") if isinstance(payload, dict) else "none"
        sent[(str(status), colour)] = sent.get((str(status), colour), 0) + 1
        return status

    for _ in range(args.ok):
        send("/menus")
    for _ in range(args.not_found):
        send("/_test/status/404")
    tries = 0
    while sent.get(("429", "none"), 0) < args.limited and tries < 60:
        send("/menus")
        tries += 1
    conn.close()
    expected = {k: float(v) for k, v in sent.items()}
    expected[("count", "")] = float(sum(sent.values()))
    deadline = time.monotonic() + 15  # mtail polls the log every 250 ms
    while True:
        after = scrape(args.metrics)
        keys = set(after) | set(before)
        moved = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys}
        moved = {k: v for k, v in moved.items() if v}
        if moved == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for code in ("200", "404", "429"):
        check(any(k[0] == code for k in sent), f"no {code} among the answers: {sent}")
    check(moved == expected, f"counters moved by {moved}, the client saw {expected}")
    label = lambda d: {f"{k[0]}/{k[1]}" if k[1] else k[0]: v for k, v in sorted(d.items())}  # noqa: E731
    return {"sent": label(sent), "counters_moved": label(moved)}


def cmd_tls(args) -> dict:
    result = {}
    versions = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
                "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
    for name, version in versions.items():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        ctx.minimum_version = ctx.maximum_version = version
        try:
            with socket.create_connection((args.host, args.port), timeout=5) as raw, \
                    ctx.wrap_socket(raw) as tls:
                result[name] = f"accepted {tls.cipher()[0]}"
        except (ssl.SSLError, OSError) as exc:
            result[name] = f"refused ({type(exc).__name__})"
    wanted = set(args.accept.split(","))
    for name, outcome in result.items():
        check(outcome.startswith("accepted") == (name in wanted), f"{name}: {outcome}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--ca", default="/root/edge-ca.pem")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("headers"); p.add_argument("--expect", required=True)
    sub.add_parser("waf")
    p = sub.add_parser("ratelimit"); p.add_argument("--expect", required=True); p.add_argument("--count", type=int, default=120)
    p = sub.add_parser("single"); p.add_argument("--path", default="/menus"); p.add_argument("--xff", default=""); p.add_argument("--want", type=int, default=0)
    p = sub.add_parser("loop"); p.add_argument("--seconds", type=float, default=120); p.add_argument("--until", default="green")
    p = sub.add_parser("tls"); p.add_argument("--accept", default="TLSv1.2,TLSv1.3")
    p = sub.add_parser("counters"); p.add_argument("--metrics", required=True)
    p.add_argument("--ok", type=int, default=3); p.add_argument("--not-found", type=int, default=3)
    p.add_argument("--limited", type=int, default=3)
    args = parser.parse_args()
    out = globals()["cmd_" + args.cmd](args)
    out["failures"] = FAILURES
    print(json.dumps(out))
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
