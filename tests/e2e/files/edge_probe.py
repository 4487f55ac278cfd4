"""Client-side probe of the Zapora edge, run by tests/e2e/test_edge.py on the controller
or, copied over SSH, on a lab host (each host is its own client address for the edge's
per-address rate limit and admin allowlist). Standard library only: the lab hosts have
Debian's python3 and nothing else. Each command prints one JSON object; `tls` exits 1
when a check fails, the others only report and leave the assertions to the test.

  tls       TLS versions: which handshakes the edge accepts (checked against --accept)
  ciphers   every suite this OpenSSL can offer at TLS 1.2, one handshake each: which the edge
            accepts (testssl's cipher enumeration, without testssl)
  requests  HTTP requests from a JSON list, each on a new connection; status, every
            response header (repeats kept) and the body
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import ssl
import sys
import time
from typing import Any


def tls_context(version: ssl.TLSVersion | None = None, ciphers: str = "") -> ssl.SSLContext:
    """A context that accepts any certificate: the TLS probes are about what the server
    negotiates, not about its certificate (the HTTP requests verify it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if ciphers:
        ctx.set_ciphers(ciphers)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def handshake(args: argparse.Namespace, ctx: ssl.SSLContext) -> str:
    """The suite the server chose, or "refused (<error>)"."""
    try:
        with (
            socket.create_connection((args.host, args.port), timeout=5) as raw,
            ctx.wrap_socket(raw) as tls,
        ):
            cipher = tls.cipher()
            return f"accepted {cipher[0] if cipher else '?'}"
    except (ssl.SSLError, OSError) as exc:
        return f"refused ({type(exc).__name__})"


def cmd_tls(args: argparse.Namespace) -> dict[str, Any]:
    versions = {
        "TLSv1": ssl.TLSVersion.TLSv1,
        "TLSv1.1": ssl.TLSVersion.TLSv1_1,
        "TLSv1.2": ssl.TLSVersion.TLSv1_2,
        "TLSv1.3": ssl.TLSVersion.TLSv1_3,
    }
    # SECLEVEL=0 lets this client offer the old versions at all: a refusal must be the
    # server's.
    result = {
        name: handshake(args, tls_context(v, "ALL:@SECLEVEL=0")) for name, v in versions.items()
    }
    wanted = set(args.accept.split(","))
    failures = [
        f"{name}: {outcome}"
        for name, outcome in result.items()
        if outcome.startswith("accepted") != (name in wanted)
    ]
    return {**result, "failures": failures}


def cmd_ciphers(args: argparse.Namespace) -> dict[str, Any]:
    known = tls_context(ciphers="ALL:COMPLEMENTOFALL:@SECLEVEL=0").get_ciphers()
    # Suites from older versions (SHA-1 CBC, labelled SSLv3/TLSv1) are offered at 1.2 too.
    suites = sorted({c["name"] for c in known if c["protocol"] != "TLSv1.3"})
    accepted = []
    for name in suites:
        outcome = handshake(args, tls_context(ssl.TLSVersion.TLSv1_2, f"{name}:@SECLEVEL=0"))
        if outcome == f"accepted {name}":
            accepted.append(name)
    return {"openssl": ssl.OPENSSL_VERSION, "tried": suites, "accepted": accepted}


def request(
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> dict[str, Any]:
    """One request on a new connection: status, headers (lower-case), body (JSON when it
    parses), and when it started and ended. Also the controller's own probe (test_edge)."""
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    started = time.time()
    try:
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode(errors="replace")
    return {
        "path": path,
        "status": resp.status,
        "headers": [[k.lower(), v] for k, v in resp.getheaders()],
        "body": body,
        "started": started,
        "ended": time.time(),
    }


def cmd_requests(args: argparse.Namespace) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=args.ca)  # verifies the edge's certificate
    results = []
    for spec in json.loads(args.spec):
        headers = {"Accept": "application/json", **spec.get("headers", {})}
        data = None
        if spec.get("json") is not None:
            data = json.dumps(spec["json"]).encode()
            headers["Content-Type"] = "application/json"
        results.append(
            request(
                args.host, args.port, ctx, spec["path"], spec.get("method", "GET"), headers, data
            )
        )
    return {"results": results}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--ca", required=True, help="the edge's CA certificate (PEM)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("tls").add_argument("--accept", default="TLSv1.2,TLSv1.3")
    sub.add_parser("ciphers")
    sub.add_parser("requests").add_argument("spec", help="JSON list of {method, path, ...}")
    args = parser.parse_args()
    out = {"tls": cmd_tls, "ciphers": cmd_ciphers, "requests": cmd_requests}[args.cmd](args)
    print(json.dumps(out))
    sys.exit(1 if out.get("failures") else 0)


if __name__ == "__main__":
    main()
