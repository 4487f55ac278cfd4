#!/usr/bin/env python3
"""Add up what `make test` ran: pytest's JUnit files and molecule's scenario results.

Prints one closing line, `total: N passed, M failed`, and the per-suite figures above it.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

results = Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/test-results")
passed = failed = skipped = 0
failed_by_suite: dict[str, int] = {}
# Tests each suite ran (JUnit files by name, molecule scenarios); lint reports none.
ran: dict[str, int] = {"unit": 0, "rules": 0, "app": 0, "molecule": 0, "e2e": 0}
for junit in sorted(results.glob("*.xml")):
    root = ET.parse(junit).getroot()  # noqa: S314 (our own pytest output)
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    t = sum(int(s.get("tests", 0)) for s in suites)
    f = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    s_ = sum(int(s.get("skipped", 0)) for s in suites)
    print(f"{junit.stem}: {t - f - s_} passed, {f} failed, {s_} skipped")
    # e2e-fresh, e2e-data and e2e-alert are processes of the e2e suite (scripts/e2e-suite.sh).
    suite = junit.stem.split("-")[0]
    ran[suite] = ran.get(suite, 0) + t - s_
    passed += t - f - s_
    failed += f
    failed_by_suite[suite] = failed_by_suite.get(suite, 0) + f
    skipped += s_
molecule = results / "molecule.txt"
if molecule.exists():
    for line in molecule.read_text().splitlines():
        role, outcome, seconds = line.split()
        print(f"molecule {role}: {outcome} in {seconds} s")
        ran["molecule"] += 1
        if outcome == "passed":
            passed += 1
        else:
            failed += 1
            failed_by_suite["molecule"] = failed_by_suite.get("molecule", 0) + 1
targets = results / "targets.txt"
if targets.exists():
    for line in targets.read_text().splitlines():
        target, outcome, seconds = line.split()
        print(f"make {target}: {outcome} in {seconds} s")
        suite = {"test-roles": "molecule", "test-e2e-suite": "e2e"}.get(
            target, target.removeprefix("test-")
        )
        if outcome != "ok" and not failed_by_suite.get(suite):
            # A step that failed before its tests could report (a lint error, a lab that
            # did not come up) still counts: the summary never reads green over a red run.
            failed += 1
        elif outcome == "ok" and suite in ran and ran[suite] == 0:
            # A test step that says ok but reported no test proves nothing: it fails.
            print(f"make {target}: ok, but it ran no test: counted as failed")
            failed += 1
# Checks a suite could not run on this machine, written by tests through
# tests/not_run.py (what, and why): listed, so a green line never hides them.
not_run = results / "not-run.txt"
if not_run.exists():
    for line in sorted(set(not_run.read_text().splitlines())):
        print(f"NOT RUN here: {line}")
print(f"total: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
sys.exit(1 if failed or passed == 0 else 0)
