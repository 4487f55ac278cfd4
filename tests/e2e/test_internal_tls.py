"""Every internal hop speaks TLS 1.3 from the internal CA (issue 20): a plaintext client is
turned away on each internal port, `openssl s_client` gets nowhere with TLS 1.2 and
completes TLS 1.3 verified by the internal CA, and a certificate made to expire within a
day is flagged by TlsCertificateExpiresSoon and renewed by the next run of its tier.

Each probe runs on a host the firewall admits to that port (an app host for PostgreSQL,
Redis and Sentinel; mon1, the monitoring host and an etcd member, for Patroni's REST API,
etcd and the exporters it scrapes: node_exporter on a database and an app host,
postgres_exporter, redis_exporter, etcd's metrics listener, the edge's exporter and its
mtail behind nginx, and the active colour's API and worker metrics ports on each app host,
verified by the name Prometheus checks, and Prometheus (9090) and Alertmanager (9093)
themselves; edge1 for the API's active colour port on each app host, the edge's upstream,
verified by the name nginx checks), so a refusal is the server's, not the firewall's. Not
covered here: Alertmanager's cluster port (9094), off in the lab's single-instance layout
(tests/unit/test_monitoring_tls.py runs two peers over its mutual TLS)."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.conftest import PROMETHEUS_URL, Lab, app_state, internal_tls, run_documented
from tests.e2e.test_app_hosts import role_defaults

pytestmark = [pytest.mark.e2e, pytest.mark.lab(shared=("app", "data"))]

# The internal CA's certificate as each probing host holds it (the app role's Compose
# secret; the etcd member's copy).
CA_ON = {
    "app1": "/etc/zapora/secrets/internal_ca",
    "mon1": "/etc/etcd/pki/ca.crt",
    "edge1": "/etc/nginx/zapora/internal-ca.crt",
}
# etcd asks its clients for a certificate: mon1 shows its member certificate on the
# client and peer ports, Prometheus's on the metrics port (as its scrapes do).
CLIENT_CERT = {
    2379: "-cert /etc/etcd/pki/member.crt -key /etc/etcd/pki/member.key",
    2380: "-cert /etc/etcd/pki/member.crt -key /etc/etcd/pki/member.key",
    2381: "-cert /etc/prometheus/tls/prometheus.crt -key /etc/prometheus/tls/prometheus.key",
}

# (probing host, target host, port, what a plaintext client sends)
ENDPOINTS = [
    ("app1", "db1", 5432, "postgres"),
    ("app1", "db2", 5432, "postgres"),
    ("app1", "db1", 6379, "redis"),
    ("app1", "db2", 6379, "redis"),
    ("app1", "db1", 26379, "redis"),
    ("app1", "mon1", 26379, "redis"),
    ("mon1", "db1", 8008, "http"),
    ("mon1", "db2", 8008, "http"),
    ("mon1", "db1", 2379, "http"),
    ("mon1", "db1", 2380, "http"),
    ("mon1", "db1", 2381, "http"),  # etcd's metrics
    ("mon1", "db1", 9100, "http"),  # node_exporter
    ("mon1", "app1", 9100, "http"),
    ("mon1", "db1", 9187, "http"),  # postgres_exporter
    ("mon1", "db1", 9121, "http"),  # redis_exporter
    ("mon1", "edge1", 9113, "http"),  # nginx's exporter
    ("mon1", "edge1", 3903, "http"),  # mtail, behind nginx
    ("mon1", "mon1", 9090, "http"),  # Prometheus
    ("mon1", "mon1", 9093, "http"),  # Alertmanager
]


def colour_ports() -> dict[str, dict[str, int]]:
    """The app role's ports per colour: api (the edge's upstream), api_metrics, worker_metrics."""
    ports: dict[str, dict[str, int]] = role_defaults()["app_colour_ports"]  # type: ignore[assignment]
    return ports


def endpoints(lab: Lab) -> list[tuple[str, str, int, str]]:
    """ENDPOINTS and, on each app host, the active colour's ports: its API port from edge1
    (the edge's upstream), its API and worker metrics ports from mon1 (Prometheus's scrape;
    the firewall opens them to the monitoring hosts only)."""
    out = list(ENDPOINTS)
    for host in lab.groups["app"]:
        ports = colour_ports()[str(app_state(lab, host)["active"])]
        out.append(("edge1", host, ports["api"], "http"))
        out += [("mon1", host, ports[name], "http") for name in ("api_metrics", "worker_metrics")]
    return out


# One plaintext exchange per endpoint: connect, send what a plain client would, read the
# first answer. Prints {"host:port": "refused" | "filtered" | "reset" | <reply, latin-1>}.
PLAIN_PROBE = r"""
import json, socket, struct, sys
PG = b"user\0zapora_app\0database\0zapora\0\0"
SEND = {
    "postgres": struct.pack("!ii", 8 + len(PG), 196608) + PG,
    "redis": b"PING\r\n",
    "http": b"GET / HTTP/1.0\r\n\r\n",
}
out = {}
for arg in sys.argv[1:]:
    host, port, kind = arg.split(":")
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, int(port)))
        s.sendall(SEND[kind])
        data = b""
        while len(data) < 400:
            chunk = s.recv(400)
            if not chunk:
                break
            data += chunk
        out[host + ":" + port] = data.decode("latin-1")
    except ConnectionRefusedError:
        out[host + ":" + port] = "refused"
    except ConnectionResetError:
        out[host + ":" + port] = "reset"
    except (TimeoutError, socket.timeout):
        out[host + ":" + port] = "filtered"
    finally:
        s.close()
print(json.dumps(out))
"""


def plain_replies(lab: Lab, client: str, probed: list[tuple[str, str, int, str]]) -> dict[str, str]:
    args = [
        f"{lab.hosts[target].address}:{port}:{kind}"
        for host, target, port, kind in probed
        if host == client
    ]
    cmd = f"python3 -c {shlex.quote(PLAIN_PROBE)} {' '.join(args)}"
    result: dict[str, str] = json.loads(lab.ssh(client, cmd, timeout=90).stdout)
    return result


def refused_in_clear(kind: str, reply: str) -> bool:
    """The server turned a plaintext client away: PostgreSQL with pg_hba's "no encryption"
    error, Redis and Python's TLS by closing or resetting the connection (or a TLS alert),
    Go's TLS (etcd, the exporters) with its fixed 400 naming an HTTPS server, nginx with
    its 400 for a plain request on an HTTPS port. A plain server would have answered the
    request (+PONG / -NOAUTH, HTTP/1.x 200 or 401, an auth request)."""
    if reply in ("refused", "filtered"):
        return False  # nothing listens, or the firewall: proves nothing about TLS
    if kind == "postgres":
        return "no encryption" in reply
    if reply in ("", "reset") or reply.startswith("\x15"):
        return True
    return kind == "http" and ("HTTPS server" in reply or "sent to HTTPS port" in reply)


def test_a_plaintext_client_is_turned_away_on_every_internal_port(lab: Lab) -> None:
    probed = endpoints(lab)
    replies = {k: v for client in CA_ON for k, v in plain_replies(lab, client, probed).items()}
    wrong = {}
    for _, target, port, kind in probed:
        key = f"{lab.hosts[target].address}:{port}"
        if not refused_in_clear(kind, replies[key]):
            wrong[f"{target}:{port}"] = replies[key][:160]
    assert not wrong, f"served in clear (or nothing listens) on: {wrong}"


def s_client(lab: Lab, client: str, target: str, port: int, version: str) -> tuple[int, str]:
    address = lab.hosts[target].address
    extra = "-starttls postgres" if port == 5432 else ""
    extra += f" {CLIENT_CERT[port]}" if port in CLIENT_CERT else ""
    # The colour ports' certificate is checked against the name every app host's carries,
    # as nginx (proxy_ssl_name) and Prometheus (server_name) check it; every other port
    # against the address the client connects to.
    verify = f"-verify_ip {address}"
    if port in {p for ports in colour_ports().values() for p in ports.values()}:
        verify = f"-verify_hostname {role_defaults()['app_api_tls_name']}"
    cmd = (
        f"timeout 10 openssl s_client -connect {address}:{port} {version} -brief "
        f"-CAfile {CA_ON[client]} -verify_return_error {verify} {extra} "
        "</dev/null 2>&1"
    )
    out = lab.ssh(client, cmd, check=False, timeout=30)
    return out.returncode, out.stdout


def test_tls_1_3_verified_by_the_internal_ca_and_tls_1_2_refused(lab: Lab) -> None:
    problems = []
    for client, target, port, _ in endpoints(lab):
        rc13, out13 = s_client(lab, client, target, port, "-tls1_3")
        if rc13 != 0 or "Protocol version: TLSv1.3" not in out13 or "Verification: OK" not in out13:
            problems.append(f"{target}:{port} TLS 1.3 with the internal CA failed: {out13[-300:]}")
        rc12, out12 = s_client(lab, client, target, port, "-tls1_2")
        if rc12 == 0 and "Protocol version: TLSv1.2" in out12:
            problems.append(f"{target}:{port} accepted TLS 1.2")
    assert not problems, "\n".join(problems)


# The certificate the renewal test shortens: a Sentinel-only host's (mon1), so no data
# node restarts; its tier's run is `site.yml --tags redis` (docs/redis.md).
RENEW_HOST = "mon1"
RENEW_CERT = "/etc/redis/tls/redis.crt"
PROMETHEUS = PROMETHEUS_URL


def not_after(lab: Lab, host: str) -> int:
    enddate = f"openssl x509 -noout -enddate -in {RENEW_CERT} | cut -d= -f2"
    out = lab.ssh(host, f'date -d "$({enddate})" +%s')
    return int(out.stdout.strip())


def expiry_alert(severity: str) -> bool:
    alerts = httpx.get(f"{PROMETHEUS}/api/v1/alerts", timeout=10, verify=internal_tls()).json()[
        "data"
    ]["alerts"]
    return any(
        a["labels"].get("alertname") == "TlsCertificateExpiresSoon"
        and a["labels"].get("host") == RENEW_HOST
        and a["labels"].get("path") == RENEW_CERT
        and a["labels"].get("severity") == severity
        and a["state"] == "firing"
        for a in alerts
    )


def wait_for(probe: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return True
        time.sleep(3)
    return False


# It runs the Redis tier's playbook and restarts a Sentinel: the data tier is its alone.
# In `make test` (93 s on the lab, 72 s of it the site.yml run): issue 20 asks for it there.
@pytest.mark.lab(exclusive=("data",), shared=("app",))
def test_a_certificate_a_day_from_expiry_is_flagged_and_renewed_by_the_next_run(lab: Lab) -> None:
    ca_host = lab.groups["etcd"][0]  # internal_ca_host: the first etcd member
    # A certificate for the same key and names, signed by the internal CA for one day.
    csr = lab.ssh(
        RENEW_HOST,
        f"openssl x509 -in {RENEW_CERT} -x509toreq -copy_extensions copyall "
        "-signkey /etc/redis/tls/redis.key 2>/dev/null",
    ).stdout
    short = lab.ssh(
        ca_host,
        "f=$(mktemp) && cat >$f <<'EOF'\n" + csr + "EOF\n"
        "openssl x509 -req -in $f -CA /etc/zapora-ca/ca.crt -CAkey /etc/zapora-ca/ca.key "
        "-set_serial 0x$(openssl rand -hex 16) -days 1 -copy_extensions copyall 2>/dev/null; "
        "rm -f $f",
    ).stdout
    assert "BEGIN CERTIFICATE" in short, "the CA host did not sign the one-day certificate"
    lab.ssh(
        RENEW_HOST,
        f"cat > {RENEW_CERT} <<'EOF'\n{short}EOF\nsystemctl restart redis-sentinel && "
        "systemctl start zapora-tls-expiry",
    )
    try:
        assert not_after(lab, RENEW_HOST) - time.time() < 86400 + 60
        # The expiry metric is read by Prometheus at its next scrape; the critical alert
        # (under 3 days) has no `for`, so it fires at the next evaluation.
        assert wait_for(lambda: expiry_alert("critical"), 120), (
            "TlsCertificateExpiresSoon (critical) did not fire for the one-day certificate"
        )
        started = time.monotonic()
        run = run_documented("site.yml", "--tags redis", timeout=600)
        print(f"site.yml --tags redis renewed it in {time.monotonic() - started:.0f} s")
        assert run.returncode == 0, run.stdout[-3000:]
        left = not_after(lab, RENEW_HOST) - time.time()
        assert left > 60 * 86400, f"the certificate was not renewed: {left / 86400:.1f} days left"
        # The Sentinel serves the new certificate (the run restarted it).
        rc, out = s_client(lab, "app1", RENEW_HOST, 26379, "-tls1_3")
        assert rc == 0 and "Verification: OK" in out, out[-300:]
        served = lab.ssh(
            "app1",
            f"echo | openssl s_client -connect {lab.hosts[RENEW_HOST].address}:26379 -tls1_3 "
            f"-CAfile {CA_ON['app1']} 2>/dev/null | openssl x509 -noout -enddate",
        ).stdout
        assert (
            served.strip()
            == lab.ssh(RENEW_HOST, f"openssl x509 -noout -enddate -in {RENEW_CERT}").stdout.strip()
        ), served
    finally:
        lab.ssh(RENEW_HOST, "systemctl start zapora-tls-expiry", check=False)
