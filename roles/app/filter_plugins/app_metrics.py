"""Filters for the deploy's watch window: the API's Prometheus text, summed and compared.

app_metrics_sample(text) sums zapora_http_requests_total (all, and status 5xx) and the
zapora_http_request_duration_seconds buckets over every route except the probes
(/health/*, /metrics); app_metrics_window(before, after) turns two samples into the
window's requests, errors, error ratio and p99 (upper bound of the bucket that holds it).
"""

from __future__ import annotations

import math
import re
from typing import Any

_LINE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)"
)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_PROBES = ("/health", "/metrics")


def _labels(text: str | None) -> dict[str, str]:
    return dict(_LABEL.findall(text or ""))


def app_metrics_sample(text: str) -> dict[str, Any]:
    requests = errors = 0.0
    buckets: dict[str, float] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        name, labels = match["name"], _labels(match["labels"])
        if labels.get("route", "").startswith(_PROBES):
            continue
        value = float(match["value"])
        if name == "zapora_http_requests_total":
            requests += value
            if labels.get("status", "").startswith("5"):
                errors += value
        elif name == "zapora_http_request_duration_seconds_bucket":
            buckets[labels["le"]] = buckets.get(labels["le"], 0.0) + value
    return {"requests": requests, "errors": errors, "buckets": buckets}


def _p99(buckets: dict[str, float]) -> float:
    ordered = sorted(buckets.items(), key=lambda kv: math.inf if kv[0] == "+Inf" else float(kv[0]))
    total = ordered[-1][1] if ordered else 0.0
    if total <= 0:
        return 0.0
    for le, count in ordered:
        if count >= 0.99 * total:
            return math.inf if le == "+Inf" else float(le)
    return math.inf


def app_metrics_window(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    requests = max(after["requests"] - before["requests"], 0.0)
    errors = max(after["errors"] - before["errors"], 0.0)
    buckets = {
        le: max(count - before["buckets"].get(le, 0.0), 0.0)
        for le, count in after["buckets"].items()
    }
    p99 = _p99(buckets)
    return {
        "requests": int(requests),
        "errors": int(errors),
        "error_ratio": round(errors / requests, 4) if requests else 0.0,
        "p99_seconds": p99 if p99 != math.inf else 999.0,
    }


def app_metrics_merge(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum samples (one per app host) into one."""
    total: dict[str, Any] = {"requests": 0.0, "errors": 0.0, "buckets": {}}
    for sample in samples:
        total["requests"] += sample["requests"]
        total["errors"] += sample["errors"]
        for le, count in sample["buckets"].items():
            total["buckets"][le] = total["buckets"].get(le, 0.0) + count
    return total


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "app_metrics_sample": app_metrics_sample,
            "app_metrics_window": app_metrics_window,
            "app_metrics_merge": app_metrics_merge,
        }
