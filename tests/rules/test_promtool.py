"""The prometheus role's alert rules, checked and unit-tested by promtool on the controller.

promtool comes from Debian's `prometheus` package (`make setup-test` installs it). The
CI host's Debian 12 ships promtool 2.42, the lab's Debian 13 ships 2.53: the e2e test
tests/e2e/test_monitoring.py::test_rule_unit_tests_pass_with_mon1s_promtool runs the
same unit tests with mon1's 2.53, so both versions are covered.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "roles" / "prometheus" / "files" / "rules"
RULE_FILES = sorted(RULES.glob("*.rules.yml"))
TEST_FILES = sorted((RULES / "tests").glob("*.test.yml"))


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run `make setup-test` (Debian package prometheus)")
    return path


def test_rule_files_exist() -> None:
    assert RULE_FILES, f"no *.rules.yml under {RULES}"
    assert TEST_FILES, f"no unit tests under {RULES / 'tests'}"


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(rule_file: Path) -> None:
    out = subprocess.run(
        [_promtool(), "check", "rules", str(rule_file)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_test_rules(test_file: Path) -> None:
    out = subprocess.run(
        [_promtool(), "test", "rules", test_file.name],
        cwd=test_file.parent,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_rule_file_has_unit_tests() -> None:
    import yaml

    tested = {
        Path(f).name
        for t in TEST_FILES
        for f in (yaml.safe_load(t.read_text()) or {}).get("rule_files", [])
    }
    untested = [p.name for p in RULE_FILES if p.name not in tested]
    assert not untested, f"rule files without a promtool unit test: {untested}"
