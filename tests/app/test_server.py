"""The API as deployed: gunicorn with uvicorn workers. Metrics add up across workers, SIGTERM
drains in-flight requests, OTLP spans (HTTP, SQL, Redis) reach a collector, and concurrent
retries with one Idempotency-Key over real sockets make one order."""

from __future__ import annotations

import gzip
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from zapora import cli

from . import servers as srv
from .conftest import Catalog, People


@dataclass
class Collector:
    spans: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)


def _collector() -> tuple[ThreadingHTTPServer, Collector]:
    seen = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        attrs = {a.key: a.value for a in span.attributes}
                        seen.spans.append((span.trace_id.hex(), span.name, attrs))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@dataclass
class Running:
    url: str
    proc: subprocess.Popen[bytes]
    collector: Collector
    metrics_url: str


def start_gunicorn(
    servers: srv.Servers, secret_file: Path, tmp: Path, ca: Path | None = None, **env: str
) -> tuple[str, subprocess.Popen[bytes]]:
    """`zapora serve` on a free port; with ZAPORA_TLS_CERT_FILE in env it serves HTTPS and
    is checked against ca."""
    port = srv.free_port()
    metrics_port = srv.free_port()
    metrics_dir = tmp / "prom"
    metrics_dir.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "zapora.cli", "serve"],
        env={
            **os.environ,
            "ZAPORA_ENVIRONMENT": "test",
            "ZAPORA_DATABASE_URL": servers.primary.dsn(),
            "ZAPORA_REDIS_URL": servers.redis_url,
            "ZAPORA_JWT_SECRET_FILE": str(secret_file),
            "ZAPORA_BCRYPT_ROUNDS": "4",
            "ZAPORA_BIND": f"127.0.0.1:{port}",
            "ZAPORA_WORKERS": "2",
            "ZAPORA_LOG_LEVEL": "WARNING",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "ZAPORA_METRICS_PORT": str(metrics_port),
            **env,
        },
        stdout=subprocess.DEVNULL,
    )
    url = f"{'https' if 'ZAPORA_TLS_CERT_FILE' in env else 'http'}://127.0.0.1:{port}"
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health/ready", timeout=1, verify=verify).status_code == 200:
                return url, proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    # SIGTERM lets the master stop its workers; SIGKILL would orphan them.
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    raise RuntimeError("gunicorn did not become ready")


@pytest.fixture(scope="module")
def running(
    servers: srv.Servers, secret_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    collector_server, collector = _collector()
    metrics_port = srv.free_port()
    url, proc = start_gunicorn(
        servers,
        secret_file,
        tmp_path_factory.mktemp("gunicorn"),
        ZAPORA_OTLP_ENDPOINT=f"http://127.0.0.1:{collector_server.server_port}",
        OTEL_BSP_SCHEDULE_DELAY="100",
        ZAPORA_METRICS_PORT=str(metrics_port),
    )
    try:
        yield Running(url, proc, collector, f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        collector_server.shutdown()


def _metric(text: str, prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def test_metrics_add_up_across_workers(running: Running) -> None:
    before = _metric(
        httpx.get(running.metrics_url).text,
        'zapora_http_requests_total{method="GET",route="/health/live",status="200"}',
    )
    # New connections each time so both workers serve some of them.
    for _ in range(40):
        assert httpx.get(running.url + "/health/live").status_code == 200
    after = _metric(
        httpx.get(running.metrics_url).text,
        'zapora_http_requests_total{method="GET",route="/health/live",status="200"}',
    )
    assert after - before == 40
    # The public port does not serve them.
    assert httpx.get(running.url + "/metrics").status_code == 404


def test_spans_reach_the_collector(running: Running, catalog: Catalog, people: People) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    # The first list request misses both caches: HTTP, SQL and Redis spans in one trace.
    r = httpx.get(
        running.url + "/menu-items",
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    assert r.status_code == 200
    deadline = time.monotonic() + 10
    names: set[str] = set()
    while time.monotonic() < deadline:
        names = {name for tid, name, _ in running.collector.spans if tid == trace_id}
        if {"GET /menu-items", "SQL SELECT"} <= names and any(
            n.startswith("redis ") for n in names
        ):
            break
        time.sleep(0.2)
    assert "GET /menu-items" in names
    assert "SQL SELECT" in names
    assert any(n.startswith("redis ") for n in names)


def _route(attrs: dict[str, Any]) -> str | None:
    value = attrs.get("http.route")
    return None if value is None else str(value.string_value)


def test_order_spans_name_their_route(running: Running, catalog: Catalog, people: People) -> None:
    """The hot order routes are routed like every route: their server span carries the route
    template (`http.route`) and their SQL spans come in the same trace (the removed fast
    path's spans had neither, issue 19)."""
    traces = {
        "POST": "5bf92f3577b34da6a3ce929d0e0e4736",
        "GET": "6bf92f3577b34da6a3ce929d0e0e4736",
    }
    body = {"items": [{"menu_item_id": catalog.items[0]["id"], "quantity": 1}]}
    created = httpx.post(
        running.url + "/orders",
        json=body,
        headers={
            **people.customer.headers,
            "traceparent": f"00-{traces['POST']}-00f067aa0ba902b7-01",
        },
    )
    assert created.status_code == 201
    shown = httpx.get(
        f"{running.url}/orders/{created.json()['id']}",
        headers={
            **people.customer.headers,
            "traceparent": f"00-{traces['GET']}-00f067aa0ba902b7-01",
        },
    )
    assert shown.status_code == 200
    wanted = {"POST": "/orders", "GET": "/orders/{order_id}"}
    deadline = time.monotonic() + 10
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    while time.monotonic() < deadline:
        found = {
            method: [(name, attrs) for tid, name, attrs in running.collector.spans if tid == trace]
            for method, trace in traces.items()
        }
        if all(
            any(_route(a) == wanted[m] for _, a in spans)
            and any(n.startswith("SQL ") for n, _ in spans)
            for m, spans in found.items()
        ):
            break
        time.sleep(0.2)
    for method, spans in found.items():
        names = [name for name, _ in spans]
        assert f"{method} {wanted[method]}" in names, names
        assert any(_route(a) == wanted[method] for _, a in spans), spans
        assert any(name.startswith("SQL ") for name in names), names


def test_concurrent_idempotent_posts_over_http(
    running: Running, people: People, catalog: Catalog, db: psycopg.Connection[dict[str, Any]]
) -> None:
    headers = {**people.customer.headers, "Idempotency-Key": "http-retry"}
    body = {"items": [{"menu_item_id": catalog.items[0]["id"], "quantity": 3}]}
    barrier = threading.Barrier(20)

    def post(_: int) -> httpx.Response:
        barrier.wait()
        return httpx.post(running.url + "/orders", json=body, headers=headers, timeout=30)

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(post, range(20)))
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert all(r.json() == responses[0].json() for r in responses)
    assert db.execute("SELECT count(*) AS n FROM orders").fetchone() == {"n": 1}


def test_sigterm_drains_in_flight_requests(
    servers: srv.Servers, secret_file: Path, tmp_path: Path, client: TestClient
) -> None:
    url, proc = start_gunicorn(servers, secret_file, tmp_path)
    result: dict[str, Any] = {}
    with psycopg.connect(servers.primary.dsn()) as blocker:
        # The request waits on this lock, so it is in flight when SIGTERM arrives.
        blocker.execute("LOCK TABLE menus IN ACCESS EXCLUSIVE MODE")

        def slow() -> None:
            result["response"] = httpx.get(url + "/menus", timeout=30)

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None  # still draining
        blocker.rollback()
    thread.join(30)
    assert result["response"].status_code == 200
    assert proc.wait(30) == 0


def test_the_api_port_serves_tls_1_3_only_with_its_certificate(
    servers: srv.Servers, secret_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The colour port as the app role runs it (ZAPORA_TLS_CERT_FILE/KEY_FILE): a client
    verifying against the CA gets TLS 1.3; TLS 1.2 and plain HTTP get no answer; the
    container's liveness probe follows the scheme."""
    ca = srv.make_ca(tmp_path, "internal-ca")
    crt, key = srv.make_leaf(tmp_path, "internal-ca", "api", "DNS:api.zapora.internal,IP:127.0.0.1")
    url, proc = start_gunicorn(
        servers, secret_file, tmp_path, ca,
        ZAPORA_TLS_CERT_FILE=str(crt), ZAPORA_TLS_KEY_FILE=str(key),
    )  # fmt: skip
    try:
        verified = ssl.create_default_context(cafile=ca)
        with httpx.Client(verify=verified) as client:
            assert client.get(url + "/health/live").status_code == 200
        tls12 = ssl.create_default_context(cafile=ca)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health/live", verify=tls12, timeout=5)
        with pytest.raises(httpx.HTTPError):
            httpx.get(url.replace("https://", "http://") + "/health/live", timeout=5)
        monkeypatch.setenv("ZAPORA_BIND", url.removeprefix("https://"))
        monkeypatch.setenv("ZAPORA_TLS_CERT_FILE", str(crt))
        assert cli.main(["healthcheck"]) == 0
        monkeypatch.delenv("ZAPORA_TLS_CERT_FILE")
        assert cli.main(["healthcheck"]) == 1
        # A renewed certificate (written by rename, as Ansible does) is served after a
        # SIGHUP: gunicorn's new workers load it (the app role's renewal step).
        new_crt, new_key = srv.make_leaf(tmp_path, "internal-ca", "api2", "IP:127.0.0.1")
        os.replace(new_key, key)
        os.replace(new_crt, crt)
        proc.send_signal(signal.SIGHUP)
        host, port = url.removeprefix("https://").split(":")
        deadline = time.monotonic() + 30
        served = ""
        while time.monotonic() < deadline:
            served = ssl.get_server_certificate((host, int(port)), ca_certs=str(ca), timeout=5)
            if served.strip() == crt.read_text().strip():
                break
            time.sleep(0.5)
        assert served.strip() == crt.read_text().strip(), "the renewed certificate is not served"
    finally:
        proc.terminate()
        proc.wait(30)
