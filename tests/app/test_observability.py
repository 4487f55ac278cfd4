"""Health, readiness, metrics, request ids and the JSON log lines."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from zapora.infra import metrics
from zapora.migrate import head_revision

from . import servers as srv
from .conftest import Catalog, People, app_for, make_settings, register


def test_live(client: TestClient) -> None:
    r = client.get("/health/live")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_ready(client: TestClient) -> None:
    r = client.get("/health/ready")
    assert r.status_code == 200
    assert r.json()["checks"] == {"database": "ok", "migrations": "ok", "redis": "ok"}


def test_not_ready_when_redis_and_database_are_down(
    servers: srv.Servers, secret_file: Path
) -> None:
    settings = make_settings(
        servers,
        secret_file,
        redis_url=f"redis://127.0.0.1:{srv.free_port()}/0",
        database_url=f"postgresql://postgres@127.0.0.1:{srv.free_port()}/zapora?connect_timeout=1",
        db_pool_min=0,
    )
    with TestClient(app_for(settings)) as broken:
        r = broken.get("/health/ready")
        assert r.status_code == 503
        body = r.json()
        assert r.headers["content-type"] == "application/problem+json"
        assert body["checks"]["redis"] == "failed"
        assert body["checks"]["database"] == "failed"
        assert broken.get("/health/live").status_code == 200


def test_not_ready_when_schema_behind(
    client: TestClient, db: psycopg.Connection[dict[str, Any]]
) -> None:
    db.execute("UPDATE alembic_version SET version_num = '0001'")
    try:
        r = client.get("/health/ready")
        assert r.status_code == 503
        assert "migrations" in r.json()["detail"]
    finally:
        db.execute("UPDATE alembic_version SET version_num = %s", (head_revision(),))


def test_ready_when_a_newer_release_migrated(
    client: TestClient, db: psycopg.Connection[dict[str, Any]]
) -> None:
    # Blue/green: the new colour ran `zapora migrate` (expand only); this one keeps serving.
    db.execute("UPDATE alembic_version SET version_num = 'f00dfeed'")
    try:
        assert client.get("/health/ready").status_code == 200
    finally:
        db.execute("UPDATE alembic_version SET version_num = %s", (head_revision(),))


def test_request_id_is_honoured_or_generated(client: TestClient) -> None:
    r = client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = client.get("/health/live", headers={"X-Request-ID": "bad id\twith spaces"})
    assert len(r.headers["x-request-id"]) == 32
    assert client.get("/nope").headers["x-request-id"]


def _lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_access_and_audit_log_lines(
    client: TestClient, people: People, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = client.post(
        "/menus",
        json={"name": "Logged"},
        headers={**people.staff.headers, "X-Request-ID": "req-1", "traceparent": traceparent},
    )
    assert r.status_code == 201
    lines = _lines(capsys.readouterr().out)
    access = [line for line in lines if line.get("kind") == "access"]
    audit = [line for line in lines if line.get("kind") == "audit"]
    assert len(access) == 1 and len(audit) == 1
    line = access[0]
    assert line["request_id"] == "req-1"
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert line["user_id"] == people.staff.id
    assert line["route"] == "/menus"
    assert line["status"] == 201
    assert line["duration_ms"] >= 0
    assert audit[0]["action"] == "menu.created"
    assert audit[0]["user_id"] == people.staff.id
    assert audit[0]["request_id"] == "req-1"
    assert audit[0]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


Sample = tuple[str, tuple[tuple[str, str], ...]]


def _sample(name: str, labels: dict[str, str]) -> Sample:
    return name, tuple(sorted(labels.items()))


def _samples() -> dict[Sample, float]:
    """Every sample this process exports, parsed from the exposition text."""
    text = metrics.render()[0].decode()
    return {
        _sample(sample.name, sample.labels): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_red_and_business(client: TestClient, people: People, catalog: Catalog) -> None:
    soup = catalog.items[0]
    reads = 3
    before = _samples()
    register(client, "newcomer@example.com")
    order = {"items": [{"menu_item_id": soup["id"], "quantity": 2}]}
    headers = {**people.customer.headers, "Idempotency-Key": "metrics-1"}
    r = client.post("/orders", json=order, headers=headers)
    assert r.status_code == 201, r.text
    total = r.json()["total_minor"]
    assert total == 2 * soup["price_minor"]
    # A retry of the same order is answered again but is not a second order.
    again = client.post("/orders", json=order, headers=headers)
    assert again.status_code == 201 and again.json()["id"] == r.json()["id"]
    for _ in range(reads):
        assert client.get(f"/menus/{catalog.menu_id}").status_code == 200
    assert client.get(f"/menus/{uuid.uuid4()}").status_code == 404
    after = _samples()
    changed = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}

    def delta(name: str, **labels: str) -> float:
        return changed.get(_sample(name, labels), 0.0)

    # RED: requests by route and status, and their durations.
    route = {"method": "GET", "route": "/menus/{menu_id}"}
    assert delta("zapora_http_requests_total", **route, status="200") == reads
    assert delta("zapora_http_requests_total", **route, status="404") == 1
    assert delta("zapora_http_request_duration_seconds_count", **route) == reads + 1
    assert delta("zapora_http_request_duration_seconds_bucket", **route, le="+Inf") == reads + 1
    post = {"method": "POST", "route": "/orders", "status": "201"}
    assert delta("zapora_http_requests_total", **post) == 2
    # Business: one order in the item's currency, its total as revenue, one registration.
    currency = soup["currency"]
    assert delta("zapora_orders_created_total", currency=currency) == 1
    assert delta("zapora_order_revenue_minor_total", currency=currency) == total
    assert delta("zapora_users_registered_total") == 1
    # Not on the public port (the counters include revenue): its own listener serves them.
    assert client.get("/metrics").status_code == 404


def test_openapi_document(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    for path in ("/auth/login", "/orders/{order_id}/status", "/menu-items", "/audit-events"):
        assert path in doc["paths"]


def test_repeated_menu_list_is_served_by_the_fast_path_and_still_logged(
    client: TestClient, catalog: Catalog, capsys: pytest.CaptureFixture[str]
) -> None:
    first = client.get("/menu-items", params={"limit": 2})
    capsys.readouterr()
    again = client.get("/menu-items", params={"limit": 2}, headers={"X-Request-ID": "hit-1"})
    assert again.content == first.content
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["x-request-id"] == "hit-1"
    not_modified = client.get(
        "/menu-items", params={"limit": 2}, headers={"If-None-Match": first.headers["etag"]}
    )
    assert not_modified.status_code == 304
    access = [line for line in _lines(capsys.readouterr().out) if line.get("kind") == "access"]
    assert [(line["route"], line["status"]) for line in access] == [
        ("/menu-items", 200),
        ("/menu-items", 304),
    ]
    assert access[0]["request_id"] == "hit-1"
