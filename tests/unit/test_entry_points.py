"""The README's two commands and CI's entry point stay in step with the Makefile."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_readme_starts_with_make_lab_and_make_test() -> None:
    readme = (REPO / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert first_block, "README.md has no sh block"
    commands = [ln.split("#")[0].strip() for ln in first_block.group(1).splitlines()]
    assert [c for c in commands if c] == ["make lab", "make test"]
    assert readme.index("make lab") < 600, "the two commands must come first"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), ".ci/run must run `make test`"


def test_makefile_has_the_documented_targets() -> None:
    out = subprocess.run(
        ["make", "-C", str(REPO), "-n", "-p"], capture_output=True, text=True, check=False
    ).stdout
    targets = set(re.findall(r"^([a-z][a-z-]*):", out, re.M))
    for target in ("setup", "lab", "lab-down", "lab-status", "test", "test-role", "lint"):
        assert target in targets, f"Makefile lacks target {target}"
