"""Every PromQL expression of the Grafana dashboards parses, checked by promtool.

Grafana's variables are replaced the way Grafana expands them ($__rate_interval by a
range, $var by a regex), each expression becomes a recording rule of a temporary rule
file, and `promtool check rules` parses it. The lab's e2e suite also evaluates them
against the live Prometheus (tests/e2e/test_monitoring.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DASHBOARDS = sorted(
    (
        Path(__file__).resolve().parents[2]
        / "roles"
        / "observability_stacks"
        / "files"
        / "dashboards"
    ).glob("*.json")
)


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                out.append((f"{path.stem}/{panel['title']}/{target['refId']}", target["expr"]))
    return out


def expand(expr: str) -> str:
    """Grafana's expansion: $__rate_interval -> 5m, any other $var -> the all-value .*"""
    return re.sub(r"\$\w+", ".*", expr.replace("$__rate_interval", "5m"))


def test_there_are_expressions() -> None:
    assert len(dashboard_exprs()) >= 30


def test_promtool_parses_every_dashboard_expression(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run `make setup-test` (Debian package prometheus)")
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": expand(e)}
        for i, (_, e) in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
