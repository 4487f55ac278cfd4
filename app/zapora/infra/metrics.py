"""Prometheus metrics; multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set (gunicorn)."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    make_wsgi_app,
    start_http_server,
)
from prometheus_client import multiprocess as _mp
from prometheus_client.exposition import ThreadingWSGIServer

REQUESTS = Counter("zapora_http_requests_total", "HTTP requests", ["method", "route", "status"])
DURATION = Histogram(
    "zapora_http_request_duration_seconds",
    "HTTP request duration",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
ORDERS_CREATED = Counter("zapora_orders_created_total", "Orders created", ["currency"])
REVENUE_MINOR = Counter(
    "zapora_order_revenue_minor_total", "Order totals in minor currency units", ["currency"]
)
USERS_REGISTERED = Counter("zapora_users_registered_total", "Users registered")
AUDIT_EVENTS = Counter("zapora_audit_events_total", "Audit events", ["action"])
ORDER_EVENTS_PROCESSED = Counter(
    "zapora_order_events_processed_total", "Order events processed by the worker"
)

OUTBOX_RELAYED = Counter("zapora_outbox_relayed_total", "Outbox rows relayed to Redis", ["topic"])
ORDER_EVENTS_DEAD_LETTERED = Counter(
    "zapora_order_events_dead_lettered_total",
    "Order events moved to the dead-letter stream after too many deliveries",
)
READ_RETRIES = Counter(
    "zapora_db_read_retries_total",
    "Reads run again on a fresh connection after theirs was lost mid-query",
)
WRITE_RETRIES = Counter(
    "zapora_db_write_retries_total",
    "Idempotent writes (orders with an Idempotency-Key) run again on a fresh connection"
    " after theirs was lost mid-statement",
)
DEGRADED = Counter(
    "zapora_degraded_total",
    "Requests served without a dependency (Redis, replica), by what was skipped",
    ["dependency", "operation"],
)
# Per process (each has its own breaker); "livemax": 1 while any live process skips Redis.
REDIS_BREAKER_OPEN = Gauge(
    "zapora_redis_breaker_open",
    "1 while the Redis circuit breaker is open (commands skip Redis), else 0",
    multiprocess_mode="livemax",
)
REDIS_BREAKER_TRANSITIONS = Counter(
    "zapora_redis_breaker_transitions_total",
    "Redis circuit breaker state changes, by the state entered",
    ["to"],
)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def start_metrics_server(host: str, port: int) -> WSGIServer:
    """A background listener answering /metrics (any path) on host:port. TLS 1.3 only with
    the colour port's certificate when ZAPORA_TLS_CERT_FILE and ZAPORA_TLS_KEY_FILE are set
    (as gunicorn_conf's rule for the API's port), plain HTTP otherwise (development, tests)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    certfile = os.environ.get("ZAPORA_TLS_CERT_FILE")
    keyfile = os.environ.get("ZAPORA_TLS_KEY_FILE")
    if not (certfile and keyfile):
        server, _ = start_http_server(port, addr=host, registry=registry)
        return server
    certificate = _Certificate(certfile, keyfile)  # before binding: a missing file fails here
    tls_server = make_server(
        host, port, make_wsgi_app(registry), _TLSMetricsServer, handler_class=_QuietHandler
    )
    tls_server.certificate = certificate
    threading.Thread(target=tls_server.serve_forever, name="metrics-tls", daemon=True).start()
    return tls_server


class _Certificate:
    """The server's TLS 1.3 context, loaded again when the certificate or key file changes:
    the app role renews them by rename, and neither the worker nor gunicorn's master (which
    serves the API's metrics) restarts then. A half-written pair keeps the previous context."""

    def __init__(self, certfile: str, keyfile: str) -> None:
        self._files = (certfile, keyfile)
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] = ()
        self._context = self._load()

    def _load(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        stamp = tuple(os.stat(path).st_mtime_ns for path in self._files)
        context.load_cert_chain(*self._files)
        self._stamp = stamp
        return context

    def context(self) -> ssl.SSLContext:
        with self._lock:
            try:
                if tuple(os.stat(path).st_mtime_ns for path in self._files) != self._stamp:
                    self._context = self._load()
            except (OSError, ssl.SSLError):
                pass  # mid-renewal (key and certificate do not match yet): tried again next time
            return self._context


class _TLSMetricsServer(ThreadingWSGIServer):
    """The handshake runs in the connection's own thread, under a deadline. prometheus_client's
    own TLS (start_http_server's certfile=) wraps the listening socket, so its accept loop does
    each handshake: one client that connects and sends nothing stalls every scrape after it."""

    certificate: _Certificate
    timeout_seconds = 10.0

    def finish_request(self, request: Any, client_address: Any) -> None:
        raw: socket.socket = request
        raw.settimeout(self.timeout_seconds)
        try:
            tls = self.certificate.context().wrap_socket(raw, server_side=True)
        except OSError:  # plain HTTP, TLS 1.2 and below, a silent client: no answer
            raw.close()
            return
        with tls:
            super().finish_request(tls, client_address)


class _QuietHandler(WSGIRequestHandler):
    """No line per scrape on stderr (prometheus_client's own handler is private)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def mark_process_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _mp.mark_process_dead(pid)  # type: ignore[no-untyped-call]
