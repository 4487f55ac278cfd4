"""Every shipped alert has a severity, a runbook link and a runbook section in docs/alerts.md."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = sorted((REPO / "roles" / "prometheus" / "files" / "rules").glob("*.rules.yml"))
SEVERITIES = {"critical", "warning", "info"}


def _alerts() -> list[dict[str, object]]:
    alerts = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            alerts += [r for r in group["rules"] if "alert" in r]
    return alerts


def test_there_are_alerts() -> None:
    assert len({a["alert"] for a in _alerts()}) >= 20


def test_every_alert_has_severity_summary_and_runbook() -> None:
    for alert in _alerts():
        labels = alert.get("labels") or {}
        notes = alert.get("annotations") or {}
        assert isinstance(labels, dict) and isinstance(notes, dict)
        assert labels.get("severity") in SEVERITIES, f"{alert['alert']}: severity {labels}"
        assert notes.get("summary"), f"{alert['alert']}: no summary"
        anchor = f"docs/alerts.md#{str(alert['alert']).lower()}"
        assert notes.get("runbook") == anchor, f"{alert['alert']}: runbook must be {anchor}"


def test_every_alert_has_a_runbook_section() -> None:
    headings = set(re.findall(r"^### (\w+)$", (REPO / "docs" / "alerts.md").read_text(), re.M))
    missing = sorted({str(a["alert"]) for a in _alerts()} - headings)
    assert not missing, f"alerts without a '### Name' section in docs/alerts.md: {missing}"
