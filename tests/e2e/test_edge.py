"""The edge (nginx role) on the lab, from the controller: 127.0.0.1:8443 is edge1's 443,
127.0.0.1:8080 its 80 (inventory/lab/hosts.yml). The API may not be deployed yet, so
requests that reach the upstreams may answer 502; the edge's own behaviour is what is
checked. The rate-limit test waits for the bucket to drain before it returns, so later
tests are not throttled."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
import time

import pytest

from tests.e2e.conftest import REPO, Lab

pytestmark = pytest.mark.e2e

HTTPS = ("127.0.0.1", 8443)
CA = REPO / ".lab" / "secrets" / "edge-ca" / "ca.crt"
# Client-side probe (TLS handshakes, HTTP requests) for the controller and the lab hosts.
EDGE_PROBE = REPO / "tests" / "e2e" / "files" / "edge_probe.py"
HEADERS = (
    "strict-transport-security",
    "content-security-policy",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
    "permissions-policy",
    "cross-origin-opener-policy",
    "cross-origin-resource-policy",
    "cache-control",
    "x-request-id",
)


def get(path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    ctx = ssl.create_default_context(cafile=str(CA))
    ctx.check_hostname = False
    conn = http.client.HTTPSConnection(*HTTPS, context=ctx, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def test_http_redirects_to_the_published_https_port() -> None:
    conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=10)
    conn.request("GET", "/menus?limit=1")
    resp = conn.getresponse()
    assert resp.status == 301
    assert resp.getheader("Location") == "https://127.0.0.1:8443/menus?limit=1"


def test_tls_versions_and_the_internal_ca() -> None:
    assert CA.exists(), f"{CA} missing: the nginx role makes it on the controller"
    # TLS 1.0 and 1.1 refused, 1.2 and 1.3 accepted; the probe prints each outcome.
    probe = subprocess.run(
        [
            sys.executable,
            str(EDGE_PROBE),
            "--host",
            HTTPS[0],
            "--port",
            str(HTTPS[1]),
            "--ca",
            str(CA),
            "tls",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr
    outcome = json.loads(probe.stdout)
    assert not outcome["failures"], outcome


def test_security_headers_on_an_error_response() -> None:
    status, headers = get("/metrics")  # answered 404 by the edge itself
    assert status == 404
    missing = [h for h in HEADERS if h not in headers]
    assert not missing, f"missing headers: {missing}"
    assert headers["content-type"] == "application/problem+json"
    assert headers.get("server") == "nginx"


def test_admin_ui_asks_the_allowlisted_controller_for_a_password() -> None:
    status, headers = get("/prometheus/")
    assert status == 401
    assert "www-authenticate" in headers


def test_one_active_colour_marker_that_nginx_checks(lab: Lab) -> None:
    markers = lab.ssh("edge1", "ls /var/lib/zapora/edge-colour").stdout.split()
    assert len(markers) == 1 and markers[0] in ("blue", "green"), markers
    conf = lab.ssh("edge1", "cat /etc/nginx/zapora/active-colour.conf").stdout
    assert f"if (-f /var/lib/zapora/edge-colour/{markers[0]})" in conf, conf


def test_rate_limit_then_the_bucket_drains() -> None:
    # A path that goes upstream: nginx's own `return` answers (such as /metrics' 404)
    # come before the limit phase and are never limited.
    path = "/health/live"
    statuses = [get(path)[0] for _ in range(120)]
    limited = statuses.count(429)
    assert limited >= 20, f"{limited} x 429 of 120: {sorted(set(statuses))}"
    # A forged X-Forwarded-For does not open another bucket.
    assert get(path, {"X-Forwarded-For": "203.0.113.9"})[0] == 429
    time.sleep(15)  # 100/min refills the 20-request burst in 12 s
    assert get(path)[0] != 429
