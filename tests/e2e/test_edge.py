"""The edge (nginx role) on the lab, probed from outside.

Client addresses: the edge limits requests per client address (100/min, burst 20, the
lab exempts no one) and admits its admin UIs from the controller only, so each test
says whose address it uses:
- the controller (10.77.0.1): 127.0.0.1:8443 and :8080 are edge1's 443 and 80
  (inventory/lab/hosts.yml). Most other e2e modules use the API from here, so only
  what needs the controller runs here: TLS handshakes and the admin UIs (neither is
  rate limited) and the rate-limit test, which waits for the bucket to drain before it
  returns;
- app1 (10.77.0.21) and app2 (10.77.0.22): tests/e2e/files/edge_probe.py, copied over
  SSH for the call, sends requests to https://10.77.0.11:443 (the edge's certificate
  names that address; the lab's CA verifies it). Each test stays inside the burst.

What the API did with a request is read from the edge's JSON access log (upstream
address and status by request id) and from the API container's own log on the app host
that answered (docker logs of the active colour's api container).
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import (
    INVENTORY,
    REPO,
    Lab,
    edge_tls,
    lab_group_vars,
    lab_secret,
    venv_tool,
)
from tests.e2e.files import edge_probe
from tests.e2e.test_baseline import port_state

pytestmark = pytest.mark.e2e

HTTPS = ("127.0.0.1", 8443)
CA = REPO / ".lab" / "secrets" / "edge-ca" / "ca.crt"
# Client-side probe (TLS handshakes, HTTP requests) for the controller and the lab hosts.
EDGE_PROBE = Path(__file__).resolve().parent / "files" / "edge_probe.py"
ACCESS_LOG = "/var/log/nginx/access.log"
COLOUR_DIR = "/var/lib/zapora/edge-colour"
# Mozilla server-side TLS, intermediate profile (guidelines 5.7): its TLS 1.2 suites.
MOZILLA_INTERMEDIATE_TLS12 = {
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256",
    "DHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-CHACHA20-POLY1305",
}


def edge_settings() -> dict[str, Any]:
    """The nginx role's defaults with the lab's nginx group_vars on top (as site.yml
    applies them; only plain values are read from the result)."""
    settings: dict[str, Any] = yaml.safe_load((REPO / "roles/nginx/defaults/main.yml").read_text())
    settings.update(lab_group_vars("nginx"))
    return settings


def expected_headers() -> dict[str, str]:
    """Every header the edge adds with a fixed value, lower-case name -> exact value."""
    s = edge_settings()
    headers = {k.lower(): str(v) for k, v in s["nginx_security_headers"].items() if str(v)}
    subdomains = "; includeSubDomains" if s["nginx_hsts_include_subdomains"] else ""
    headers["strict-transport-security"] = f"max-age={s['nginx_hsts_max_age']}{subdomains}"
    return headers


def header_problems(what: str, headers: list[list[str]]) -> list[str]:
    """What is wrong with one response's headers: each security header exactly once with
    its value, one Cache-Control and one X-Request-ID, no X-Powered-By, Server without a
    version."""
    seen: dict[str, list[str]] = {}
    for name, value in headers:
        seen.setdefault(name.lower(), []).append(value)
    problems = [
        f"{what}: {name} is {seen.get(name)}, want [{value!r}]"
        for name, value in expected_headers().items()
        if seen.get(name) != [value]
    ]
    for name in ("cache-control", "x-request-id"):
        if len(seen.get(name, [])) != 1:
            problems.append(f"{what}: {name} is {seen.get(name)}, want exactly one")
    if "x-powered-by" in seen:
        problems.append(f"{what}: X-Powered-By passed through: {seen['x-powered-by']}")
    if seen.get("server") != ["nginx"]:
        problems.append(f"{what}: Server is {seen.get('server')} (a version shown?)")
    return problems


def header(response: dict[str, Any], name: str) -> str | None:
    values = [v for k, v in response["headers"] if k == name]
    return values[0] if values else None


def fetch(
    path: str, headers: dict[str, str] | None = None, auth: str | None = None
) -> dict[str, Any]:
    """One GET from the controller on a new connection, shaped like a probe result."""
    sent = dict(headers or {})
    if auth is not None:
        sent["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    return edge_probe.request(*HTTPS, edge_tls(), path, headers=sent)


def get(path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    """Status and headers (lower-case names) of one GET from the controller; also used by
    test_monitoring."""
    r = fetch(path, headers)
    return r["status"], dict(r["headers"])


def probe_from(lab: Lab, host: str, *args: str, timeout: int = 60) -> dict[str, Any]:
    """Run edge_probe.py on `host` against edge1's 443, so the edge sees `host`'s address.
    The probe and the CA go over in the SSH command and are removed when it ends."""
    script = base64.b64encode(EDGE_PROBE.read_bytes()).decode()
    ca = base64.b64encode(CA.read_bytes()).decode()
    edge = lab.hosts["edge1"].address
    command = (
        "d=$(mktemp -d) && trap 'rm -rf \"$d\"' EXIT && "
        f'echo {script} | base64 -d >"$d/probe.py" && echo {ca} | base64 -d >"$d/ca.pem" && '
        f'python3 "$d/probe.py" --host {edge} --ca "$d/ca.pem" {shlex.join(args)}'
    )
    result = lab.ssh(host, command, check=False, timeout=timeout)
    assert result.returncode == 0, f"probe on {host}: {result.stdout}\n{result.stderr}"
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def requests_from(lab: Lab, host: str, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """HTTP requests from `host` (one new TLS connection each), in order."""
    results: list[dict[str, Any]] = probe_from(lab, host, "requests", json.dumps(specs))["results"]
    return results


def access_log(lab: Lab, *request_ids: str) -> dict[str, dict[str, Any]]:
    """The edge's access log lines of these request ids. nginx writes a line after the
    response has gone out, so a line may lag the answer briefly: up to 10 s."""
    needles = ['"request_id":"' + r + '"' for r in request_ids]
    patterns = " ".join(f"-e {shlex.quote(n)}" for n in needles)
    deadline = time.monotonic() + 10
    while True:
        out = lab.ssh("edge1", f"grep -hF {patterns} {ACCESS_LOG}", check=False).stdout
        lines = {}
        for line in out.splitlines():
            entry = json.loads(line)
            lines[entry["request_id"]] = entry
        if set(request_ids) <= set(lines) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    missing = set(request_ids) - set(lines)
    assert not missing, f"no access log line on edge1 for {sorted(missing)}"
    return lines


def active_colour(lab: Lab) -> str:
    markers = lab.ssh("edge1", f"ls {COLOUR_DIR}").stdout.split()
    assert len(markers) == 1, f"{COLOUR_DIR}: {markers}"
    return markers[0]


def answered(line: dict[str, Any], key: str) -> str:
    """The value of the upstream that answered. nginx logs every upstream it tried, comma
    separated (`502, 502, 404`): an empty API replica slot (docs/operator-guide.md
    "Autoscaling") refuses the connection and nginx tries the next server, so every value
    before the last must be such a refusal (502 with no time spent)."""
    values = [v.strip() for v in str(line[key]).split(",")]
    if key == "upstream_status":
        assert all(v == "502" for v in values[:-1]), line
    return values[-1]


def upstream_host(lab: Lab, upstream_addr: str, colour: str) -> tuple[str, str]:
    """The app host and Compose service (`api`, `api-2`, ...) behind an access log's
    upstream_addr (the last one tried), which must be a replica slot's port of the colour."""
    settings = edge_settings()
    app = lab_group_vars("app")
    port = settings["nginx_colour_ports"][colour]
    step = int(app.get("app_replica_port_step", 100))
    by_addr = {
        f"{lab.hosts[h].address}:{port + step * (slot - 1)}": (
            h,
            "api" if slot == 1 else f"api-{slot}",
        )
        for h in lab.groups["app"]
        for slot in range(1, int(app.get("app_replicas_max", 1)) + 1)
    }
    last = upstream_addr.split(",")[-1].strip()
    assert last in by_addr, f"upstream {upstream_addr!r} is not {colour} on an app host"
    return by_addr[last]


def api_log(
    lab: Lab, host: str, colour: str, request_id: str, service: str = "api"
) -> dict[str, Any]:
    """The API's access line (JSON, logged by its middleware) for one request id, from the
    colour's api container (Compose `service`: a replica slot) on `host`."""
    container = (
        f"$(docker ps -q --filter label=com.docker.compose.project=zapora-{colour} "
        f"--filter label=com.docker.compose.service={service})"
    )
    needle = shlex.quote(f'"request_id":"{request_id}"')
    deadline = time.monotonic() + 10
    while True:
        out = lab.ssh(
            host, f"docker logs --since 10m {container} 2>&1 | grep -F {needle}", check=False
        ).stdout
        found: list[dict[str, Any]] = [
            json.loads(line) for line in out.splitlines() if '"kind":"access"' in line
        ]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(found) == 1, f"{host} {colour} {service}: {len(found)} access lines for {request_id}"
    return found[0]


def test_http_redirects_to_the_published_https_port() -> None:
    # Controller; port 80 has no rate limit.
    conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=10)
    conn.request("GET", "/menus?limit=1")
    resp = conn.getresponse()
    assert resp.status == 301
    assert resp.getheader("Location") == "https://127.0.0.1:8443/menus?limit=1"


def run_local_probe(*args: str) -> dict[str, Any]:
    probe = subprocess.run(
        [
            sys.executable,
            str(EDGE_PROBE),
            *("--host", HTTPS[0], "--port", str(HTTPS[1]), "--ca", str(CA)),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr
    out: dict[str, Any] = json.loads(probe.stdout)
    return out


def test_tls_versions_and_the_internal_ca() -> None:
    # Controller, handshakes only. TLS 1.0 and 1.1 refused, 1.2 and 1.3 accepted.
    assert CA.exists(), f"{CA} missing: the nginx role makes it on the controller"
    outcome = run_local_probe("tls")
    assert not outcome["failures"], outcome


def test_tls12_offers_only_mozilla_intermediate_suites() -> None:
    # Controller, handshakes only (about 1 s). Every TLS 1.2 suite this OpenSSL knows is
    # offered alone; the edge may accept only suites of Mozilla's intermediate list.
    result = run_local_probe("ciphers")
    tried, accepted = set(result["tried"]), set(result["accepted"])
    print(f"{result['openssl']}: {len(tried)} suites tried, accepted {sorted(accepted)}")
    # The probe really tried suites outside the profile (CBC, SHA-1, RSA key exchange).
    outside = {
        "ECDHE-ECDSA-AES128-SHA256",
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-ECDSA-AES128-CCM",
        "AES128-GCM-SHA256",
    }
    assert outside <= tried, f"this OpenSSL does not offer {outside - tried}"
    assert accepted, "no TLS 1.2 suite accepted"
    assert accepted <= MOZILLA_INTERMEDIATE_TLS12, (
        f"outside Mozilla intermediate: {sorted(accepted - MOZILLA_INTERMEDIATE_TLS12)}"
    )


def test_security_headers_on_api_and_edge_answers(lab: Lab) -> None:
    # app1, 2 requests that count against its burst (the edge's own 404 comes before the
    # limit). About 2 s.
    tag = uuid.uuid4().hex[:12]
    cases = {
        # path: (status, answered by the API?)
        "/health/live": (200, True),
        f"/no-such-path-{tag}": (404, True),
        "/metrics": (404, False),  # the edge's own `return 404`
    }
    rids = [f"e2e-headers-{tag}-{i}" for i in range(len(cases))]
    specs: list[dict[str, Any]] = [
        {"path": path, "headers": {"X-Request-ID": rid}}
        for path, rid in zip(cases, rids, strict=True)
    ]
    results = requests_from(lab, "app1", specs)
    lines = access_log(lab, *rids)
    problems = []
    for (path, (status, upstream)), rid, r in zip(cases.items(), rids, results, strict=True):
        assert r["status"] == status, r
        problems += header_problems(f"{status} {path}", r["headers"])
        line = lines[rid]
        # Who answered: the API (its status in the log) or the edge (no upstream).
        assert (answered(line, "upstream_status") == str(status)) is upstream, line
        if status == 404:
            assert header(r, "content-type") == "application/problem+json", r
            assert r["body"]["status"] == 404, r
    assert not problems, "\n".join(problems)


def test_dead_upstream_answers_502_problem_json(lab: Lab) -> None:
    # Controller (the admin UIs' allowlist), not rate limited; about 4 s. The lab proxies
    # Grafana (mon1:3000) but does not start it (inventory/lab/group_vars/all/
    # monitoring.yml: no image archives), so nginx itself answers its 502.
    assert port_state(lab, "edge1", "mon1", 3000) == "refused", (
        "this test needs an admin UI whose upstream is down: Grafana runs on mon1 now"
    )
    rid = f"e2e-502-{uuid.uuid4().hex[:12]}"
    r = fetch("/grafana/", {"X-Request-ID": rid}, auth=f"admin:{lab_secret('nginx-admin')}")
    assert r["status"] == 502, r
    assert header(r, "content-type") == "application/problem+json", r
    assert r["body"] == {"type": "about:blank", "title": "Bad Gateway", "status": 502}, r
    assert header(r, "cache-control") == edge_settings()["nginx_cache_control_default"], r
    assert header(r, "x-request-id") == rid, r
    problems = header_problems("502 /grafana/", r["headers"])
    assert not problems, "\n".join(problems)
    line = access_log(lab, rid)[rid]
    assert line["upstream_addr"] == f"{lab.hosts['mon1'].address}:3000", line


def test_request_id_and_traceparent_reach_the_api(lab: Lab) -> None:
    # app1, 2 requests against its burst. About 4 s.
    colour = active_colour(lab)
    kept = f"e2e-rid-{uuid.uuid4().hex[:12]}"
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    ok, bad = requests_from(
        lab,
        "app1",
        [
            {
                "path": "/health/live",
                "headers": {"X-Request-ID": kept, "traceparent": traceparent},
            },
            {"path": "/health/live", "headers": {"X-Request-ID": "bad id;<script>"}},
        ],
    )
    assert ok["status"] == 200 and bad["status"] == 200, (ok, bad)
    # A well-formed id comes back; a malformed one is replaced by nginx's 32 hex digits.
    assert header(ok, "x-request-id") == kept, ok["headers"]
    generated = header(bad, "x-request-id") or ""
    assert re.fullmatch(r"[0-9a-f]{32}", generated), f"malformed id not replaced: {generated!r}"

    lines = access_log(lab, kept, generated)
    for rid, line in lines.items():
        # The edge's JSON line has the id, the upstream that answered and its timings.
        assert line["status"] == 200 and line["colour"] == colour, line
        assert answered(line, "upstream_status") == "200", line
        assert float(answered(line, "upstream_response_time")) >= 0, line
        host, service = upstream_host(lab, line["upstream_addr"], colour)
        # The same id reached the API, which logged it with its answer.
        logged = api_log(lab, host, colour, rid, service)
        assert logged["status"] == 200 and logged["path"] == "/health/live", logged
        # The client address the API sees is app1's, from the edge's X-Forwarded-For.
        assert logged["client_ip"] == lab.hosts["app1"].address, logged
        if rid == kept:
            # traceparent passed through: the API's trace id is the client's.
            assert line["traceparent"] == traceparent, line
            assert logged["trace_id"] == trace_id, logged
    last = json.loads(lab.ssh("edge1", f"tail -n 1 {ACCESS_LOG}").stdout)
    assert {"request_id", "upstream_addr", "upstream_response_time"} <= set(last), last


def test_waf_passes_api_calls_and_refuses_attacks(lab: Lab) -> None:
    # app2: 19 requests, inside its burst of 20 (5 of them /auth/*, inside that zone's
    # burst of 5 + 1). Registers one customer. About 4 s.
    tag = uuid.uuid4().hex[:12]
    email = f"e2e-waf-{tag}@zapora.example.com"
    password = "Tr0ub4dor&3' OR -- x!"  # quotes, SQL words and dashes, as users choose
    item, order = str(uuid.uuid4()), str(uuid.uuid4())
    n = iter(range(100))

    def call(method: str, path: str, body: Any = None, **headers: str) -> dict[str, Any]:
        rid = f"e2e-waf-{tag}-{next(n)}"
        return {
            "method": method,
            "path": path,
            "json": body,
            "headers": {**headers, "X-Request-ID": rid},
        }

    first = [
        call(
            "POST",
            "/auth/register",
            {"email": email, "password": password, "full_name": "Zoë O'Brien"},
        ),
        call("POST", "/auth/login", {"email": email, "password": "select * from; drop--'\"<>"}),
        call("POST", "/auth/login", {"email": email, "password": password}),
    ]
    answers = requests_from(lab, "app2", first)
    assert answers[0]["status"] == 201 and answers[2]["status"] == 200, answers
    tokens = answers[2]["body"]
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    then = [
        call("POST", "/auth/refresh", {"refresh_token": tokens["refresh_token"]}),
        call("GET", "/users/me", **bearer),
        call("GET", "/menus?limit=20&offset=0", **bearer),
        call("GET", f"/menu-items?menu_id={item}&q=pizza%20margherita&limit=50", **bearer),
        call(
            "POST",
            "/menus",
            {"name": "Lunch & Dinner", "description": "Our chef's picks - updated daily (vegan)."},
            **bearer,
        ),
        call(
            "PATCH",
            f"/menu-items/{item}",
            {"price_minor": 1250, "currency": "EUR", "description": "Tomato, mozzarella, basil"},
            **bearer,
        ),
        call(
            "POST",
            "/orders",
            {
                "items": [{"menu_item_id": item, "quantity": 2}],
                "notes": "Ring twice; no onions, please! Gate code #4421.",
            },
            **bearer,
            **{"Idempotency-Key": uuid.uuid4().hex},
        ),
        call("PATCH", f"/orders/{order}/status", {"status": "preparing"}, **bearer),
        call("POST", f"/orders/{order}/cancel", {}, **bearer),
        call("DELETE", f"/menus/{order}", **bearer),
        call("GET", "/audit-events?action=order.created&limit=10", **bearer),
        call("POST", "/auth/logout", **bearer),
    ]
    attacks = {
        "sql-injection": "/menus?q=1%27%20OR%20%271%27%3D%271%27%20--%20",
        "sql-injection-union": "/menu-items?q=1%20UNION%20SELECT%20password%20FROM%20users",
        "path-traversal": "/menus?file=..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "path-traversal-path": "/static/..%2f..%2f..%2fetc%2fpasswd",
    }
    attack_calls = [call("GET", path) for path in attacks.values()]
    answers += requests_from(lab, "app2", then + attack_calls)
    calls = first + then + attack_calls
    # Each answer carries the edge's request id: the one sent, except where nginx refused
    # the request line before reading any header (the 400 below), where it made its own.
    rids = [header(r, "x-request-id") or "" for r in answers]
    lines = access_log(lab, *rids)
    passed = []
    passing = len(first + then)
    for c, r, rid in zip(calls[:passing], answers[:passing], rids[:passing], strict=True):
        assert rid == c["headers"]["X-Request-ID"], (c, r)
        # The API answered (its status is the upstream's): the WAF did not refuse the call.
        assert answered(lines[rid], "upstream_status") == str(r["status"]), (c, r, lines[rid])
        passed.append(f"{c['method']} {c['path'].split('?')[0]} {r['status']}")
    print("passed the WAF:", passed)
    for (name, path), r, rid in zip(
        attacks.items(), answers[passing:], rids[passing:], strict=True
    ):
        # nginx itself refuses a path above the root (400) before the WAF sees it.
        want = (400, 403) if name == "path-traversal-path" else (403,)
        assert r["status"] in want, (name, path, r)
        assert header(r, "content-type") == "application/problem+json", (name, r)
        assert r["body"]["status"] == r["status"], (name, r)
        assert lines[rid]["upstream_addr"] == "", (name, lines[rid])  # the edge answered
    print("refused:", {name: r["status"] for name, r in zip(attacks, answers[passing:])})


def test_admin_uis_allowlist_and_password(lab: Lab) -> None:
    # app1 and the controller; the admin locations are not rate limited. About 3 s.
    paths = [ui["path"] for ui in edge_settings()["nginx_admin_uis"]]
    assert "/prometheus/" in paths, paths
    # Outside the allowlist: 403 before any password is asked for.
    for r in requests_from(lab, "app1", [{"path": p} for p in paths]):
        assert r["status"] == 403, r
        assert header(r, "content-type") == "application/problem+json", r
        assert header(r, "www-authenticate") is None, r
    password = lab_secret("nginx-admin")
    for path in paths:
        for auth in (None, f"admin:{password}x"):  # no password, a wrong one
            r = fetch(path, auth=auth)
            assert r["status"] == 401, (path, auth is None, r)
            assert header(r, "www-authenticate") == 'Basic realm="Zapora admin"', r
    # With the password the request reaches Prometheus on mon1 over HTTPS (TLS 1.3, its
    # certificate verified against the internal CA and mon1's name), which answers itself:
    # the access log names it as the upstream, and its answer is not the edge's problem+json
    # (a refused verification would be the edge's 502).
    # (The lab runs Prometheus without a route prefix, so /prometheus/ is its 404 there.)
    rid = f"e2e-admin-{uuid.uuid4().hex[:12]}"
    r = fetch("/prometheus/", {"X-Request-ID": rid}, auth=f"admin:{password}")
    line = access_log(lab, rid)[rid]
    assert line["upstream_addr"] == f"{lab.hosts['mon1'].address}:9090", line
    assert line["upstream_status"] == str(r["status"]), (r, line)
    assert header(r, "content-type") != "application/problem+json", r
    print(f"/prometheus/ with the password: {r['status']} from {line['upstream_addr']}")


def test_stub_status_on_loopback_only_and_the_exporter(lab: Lab) -> None:
    # edge1's loopback and app1 (TCP connects only). About 5 s.
    port = edge_settings()["nginx_stub_status_port"]
    fetch = (
        "python3 -c 'import sys,urllib.request as u; print(u.urlopen(sys.argv[1]).read().decode())'"
    )
    stub = lab.ssh("edge1", f"{fetch} http://127.0.0.1:{port}/stub_status").stdout
    assert stub.startswith("Active connections:"), stub
    # The exporter serves HTTPS only (TLS 1.3, the internal CA's certificate beside its own).
    tls_dir = edge_settings()["nginx_metrics_tls_dir"]
    fetch_tls = (
        "python3 -c 'import ssl,sys,urllib.request as u; c = ssl.create_default_context("
        "cafile=sys.argv[2]); print(u.urlopen(sys.argv[1], context=c).read().decode())'"
    )
    metrics = lab.ssh(
        "edge1", f"{fetch_tls} https://127.0.0.1:9113/metrics {tls_dir}/ca.crt"
    ).stdout
    assert re.search(r"^nginx_up 1$", metrics, re.MULTILINE), "nginx_up is not 1"
    # Not on the edge's own address (the listener is 127.0.0.1 only), not from outside.
    assert port_state(lab, "edge1", "edge1", port) == "refused"
    assert port_state(lab, "app1", "edge1", port) in ("refused", "filtered")


SAME_COLOUR_PLAY = """
- name: Switch the edge to the colour it has (the rollout's interface)
  hosts: edge1
  gather_facts: false
  tasks:
    - name: Switch
      ansible.builtin.include_role:
        name: nginx
        tasks_from: switch_colour
    - name: Reported unchanged, and the task did not change anything
      ansible.builtin.assert:
        that: _nginx_switch.stdout is match('unchanged') and _nginx_switch is not changed
        fail_msg: "{{ _nginx_switch.stdout }}"
"""


def test_colour_switch_to_the_same_colour_and_an_unknown_one(lab: Lab, tmp_path: Path) -> None:
    # edge1 (ansible-playbook, the switch script) and app1 (1 request). About 8 s. The
    # lab's live colour stays: the idle colour may not be running, so no real switch.
    colour = active_colour(lab)
    workers = "cat /run/nginx.pid; pgrep -P $(cat /run/nginx.pid) | sort"
    before = lab.ssh("edge1", workers).stdout.split()
    play = tmp_path / "same-colour.yml"
    play.write_text(SAME_COLOUR_PLAY)
    run = subprocess.run(
        [
            venv_tool("ansible-playbook"),
            *("-i", str(INVENTORY), str(play)),
            *("-e", f"nginx_active_colour={colour}"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert re.search(r"edge1\s+: ok=\d+\s+changed=0\s", run.stdout), run.stdout[-1500:]
    # A colour nginx's configuration does not check is refused.
    purple = lab.ssh("edge1", "/usr/local/sbin/zapora-edge-colour purple", check=False)
    assert purple.returncode == 2, purple
    assert re.match(r"failed: .* does not check", purple.stdout), purple.stdout
    assert active_colour(lab) == colour
    # Neither reloaded nginx: the same master and workers.
    assert lab.ssh("edge1", workers).stdout.split() == before
    # Traffic still goes to the colour that was active.
    rid = f"e2e-colour-{uuid.uuid4().hex[:12]}"
    (r,) = requests_from(lab, "app1", [{"path": "/health/live", "headers": {"X-Request-ID": rid}}])
    assert r["status"] == 200, r
    assert access_log(lab, rid)[rid]["colour"] == colour


def test_one_active_colour_marker_that_nginx_checks(lab: Lab) -> None:
    markers = lab.ssh("edge1", f"ls {COLOUR_DIR}").stdout.split()
    assert len(markers) == 1 and markers[0] in ("blue", "green"), markers
    conf = lab.ssh("edge1", "cat /etc/nginx/zapora/active-colour.conf").stdout
    assert f"if (-f {COLOUR_DIR}/{markers[0]})" in conf, conf


def mtail_counters(lab: Lab) -> Counter[tuple[str, str]]:
    """mtail's zapora_edge_http_responses_total by (status, colour), and the duration
    histogram's count summed over colours as ("count", ""), read on edge1's loopback."""
    port = edge_settings()["nginx_mtail_port"]
    fetch = (
        "python3 -c 'import sys,urllib.request as u; print(u.urlopen(sys.argv[1]).read().decode())'"
    )
    text = lab.ssh("edge1", f"{fetch} http://127.0.0.1:{port}/metrics").stdout
    out: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines():
        m = re.match(r"^zapora_edge_http_responses_total\{(.*)\} (\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            out[(labels["status"], labels["colour"])] = int(float(m.group(2)))
        m = re.match(r"^zapora_edge_http_request_duration_seconds_count\{.*\} (\S+)$", line)
        if m:
            out[("count", "")] += int(float(m.group(1)))
    return out


# It empties the controller's bucket at the edge: every other test that calls the API from
# the controller would get 429s meanwhile.
@pytest.mark.lab(exclusive=("app",))
def test_rate_limit_per_client_then_the_bucket_drains(lab: Lab) -> None:
    # The controller (drained, then waited for), app1 (1 request), edge1's mtail. ~20 s.
    # Paths that go upstream: nginx's own `return` answers (such as /metrics' 404) come
    # before the limit phase and are never limited.
    colour = active_colour(lab)
    retry_after = str(edge_settings()["nginx_rate_limit_retry_after"])
    before = mtail_counters(lab)
    answers = [fetch("/no-such-path") for _ in range(3)] + [
        fetch("/health/live") for _ in range(117)
    ]
    limited = [r for r in answers if r["status"] == 429]
    assert len(limited) >= 20, (
        f"{len(limited)} x 429 of 120: {Counter(r['status'] for r in answers)}"
    )
    # Every 429: Retry-After, the security headers and a problem+json body.
    for r in limited:
        assert header(r, "retry-after") == retry_after, r
        assert header(r, "content-type") == "application/problem+json", r
        assert r["body"] == {"type": "about:blank", "title": "Too Many Requests", "status": 429}
    problems = header_problems("429", limited[0]["headers"])
    assert not problems, "\n".join(problems)
    # A forged X-Forwarded-For does not open another bucket.
    forged = fetch("/health/live", {"X-Forwarded-For": "203.0.113.9"})
    assert forged["status"] == 429, forged
    # Another client address has its own bucket: app1 gets through while the controller,
    # asked again straight after, is still limited (the bucket lets one request in per
    # 0.6 s, so at most one of three quick ones passes).
    (other,) = requests_from(lab, "app1", [{"path": "/health/live"}])
    after = [fetch("/health/live") for _ in range(3)]
    last_request = time.monotonic()
    assert other["status"] == 200, other
    assert [r["status"] for r in after].count(429) >= 2, [r["status"] for r in after]

    # mtail counted exactly what the controller and app1 received, by status and colour
    # (colour "none": nginx answered itself). It follows the log every 250 ms. Exact,
    # because nothing else goes through the edge meanwhile (e2e runs take the lab in turn;
    # the lab's own checks reach the API on the app hosts).
    received = [*answers, forged, other, *after]
    expected = Counter(
        (str(r["status"]), "none" if r["status"] == 429 else colour) for r in received
    )
    expected[("count", "")] = len(received)
    deadline = time.monotonic() + 15
    while True:
        moved = mtail_counters(lab)
        moved.subtract(before)
        moved = +moved  # drop the zeros
        if moved == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert moved == expected, f"mtail moved by {dict(moved)}, the clients got {dict(expected)}"

    # 100/min refills the 20-request burst in 12 s.
    time.sleep(max(0.0, last_request + 15 - time.monotonic()))
    assert fetch("/health/live")["status"] != 429
