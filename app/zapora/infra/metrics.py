"""Prometheus metrics; multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set (gunicorn)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client import multiprocess as _mp

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


def start_metrics_server(host: str, port: int) -> None:
    """A background HTTP listener answering /metrics (any path) on host:port."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    start_http_server(port, addr=host, registry=registry)


def mark_process_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _mp.mark_process_dead(pid)  # type: ignore[no-untyped-call]
