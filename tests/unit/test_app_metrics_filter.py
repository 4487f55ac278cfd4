"""The deploy's watch window: Prometheus text from the API summed, two samples compared."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "app_metrics", REPO / "roles/app/filter_plugins/app_metrics.py"
)
assert _spec and _spec.loader
m: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(m)


def text(ok: int, err: int, probes: int, fast: int, slow: int) -> str:
    return f"""# HELP zapora_http_requests_total HTTP requests
zapora_http_requests_total{{method="GET",route="/menu-items",status="200"}} {ok}.0
zapora_http_requests_total{{method="GET",route="/menu-items",status="500"}} {err}.0
zapora_http_requests_total{{method="GET",route="/health/ready",status="503"}} {probes}.0
zapora_http_request_duration_seconds_bucket{{le="0.1",method="GET",route="/menu-items"}} {fast}.0
zapora_http_request_duration_seconds_bucket{{le="2.5",method="GET",route="/menu-items"}} {slow}.0
zapora_http_request_duration_seconds_bucket{{le="+Inf",method="GET",route="/menu-items"}} {slow}.0
"""


def test_window_counts_only_new_requests_and_skips_probes() -> None:
    before = m.app_metrics_sample(text(ok=10, err=0, probes=50, fast=10, slow=10))
    after = m.app_metrics_sample(text(ok=100, err=10, probes=500, fast=100, slow=100))
    window = m.app_metrics_window(before, after)
    assert window["requests"] == 100
    assert window["errors"] == 10
    assert window["error_ratio"] == 0.1
    assert window["p99_seconds"] == 0.1


def test_p99_is_the_bucket_holding_the_99th_percentile() -> None:
    before = m.app_metrics_sample(text(0, 0, 0, 0, 0))
    after = m.app_metrics_sample(text(ok=100, err=0, probes=0, fast=90, slow=100))
    assert m.app_metrics_window(before, after)["p99_seconds"] == 2.5


def test_empty_window_passes() -> None:
    sample = m.app_metrics_sample(text(1, 0, 0, 1, 1))
    assert m.app_metrics_window(sample, sample) == {
        "requests": 0,
        "errors": 0,
        "error_ratio": 0.0,
        "p99_seconds": 0.0,
    }


def test_merge_sums_hosts() -> None:
    a = m.app_metrics_sample(text(1, 1, 0, 2, 2))
    merged = m.app_metrics_merge([a, a])
    assert merged["requests"] == 4 and merged["errors"] == 2
