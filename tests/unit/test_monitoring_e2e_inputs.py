"""The repository files tests/e2e/test_monitoring.py reads (rule files, dashboards) are
where its path constants point, and each yields expressions with metric names: otherwise
its per-expression e2e checks would loop over nothing and pass. A repository check, so it
runs here rather than against the lab."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.e2e.test_monitoring import (
    DASHBOARDS,
    RULES,
    dashboard_exprs,
    metric_names,
    rule_exprs,
)

REPO = Path(__file__).resolve().parents[2]


def test_path_constants_point_at_the_files() -> None:
    # The rule files the prometheus role ships (and installs by default).
    role_vars = yaml.safe_load((REPO / "roles" / "prometheus" / "vars" / "main.yml").read_text())
    assert sorted(p.name for p in RULES) == sorted(role_vars["_prometheus_shipped_rules"])
    # The six dashboards (tests/unit/test_dashboards.py checks their names).
    assert len(DASHBOARDS) == 6, DASHBOARDS


def test_every_expression_names_a_metric() -> None:
    exprs = rule_exprs() + dashboard_exprs()
    assert len(exprs) > len(RULES) + len(DASHBOARDS)
    nameless = [name for name, expr in exprs if not metric_names(expr)]
    assert not nameless, f"expressions in which no metric name was found: {nameless}"
