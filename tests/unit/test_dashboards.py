"""Grafana dashboards shipped by the observability_stacks role: structure Grafana needs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted(
    (REPO / "roles" / "observability_stacks" / "files" / "dashboards").glob("*.json")
)
EXPECTED = {
    "zapora-red",
    "zapora-business",
    "zapora-postgres",
    "zapora-redis",
    "zapora-nginx",
    "zapora-hosts",
}


def test_the_six_dashboards_are_there() -> None:
    assert {p.stem for p in DASHBOARDS} == EXPECTED


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_structure(path: Path) -> None:
    board = json.loads(path.read_text())
    assert board["uid"] == path.stem
    assert board["title"] and isinstance(board["schemaVersion"], int)
    assert board["editable"] is False, "provisioned dashboards are changed in git, not in the UI"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in board["templating"]["list"]}
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["expr"].strip()
            # Every $variable a query uses is defined by the dashboard (or is Grafana's own).
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= variables, f"{panel['title']}: undefined variables {used - variables}"
