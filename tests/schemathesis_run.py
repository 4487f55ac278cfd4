"""Schemathesis as both contract tests run it: the API served directly (tests/app) and through
the lab's edge (tests/e2e). One command line, one verdict on the run's coverage."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path


def run(
    schema: str,
    config: str,
    tmp: Path,
    authorization: str,
    *,
    seed: str,
    request_timeout: int,
    max_time: int,
    extra: tuple[str, ...] = (),
) -> tuple[int, str]:
    """`st run` of `schema` with every check, the given Authorization header, /auth/logout left
    out (it would revoke the token mid-run), a fixed seed and a time bound. Prints the output
    and the run's seconds; returns the exit code and the output."""
    (tmp / "schemathesis.toml").write_text(config)
    started = time.monotonic()
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "--config-file",
            str(tmp / "schemathesis.toml"),
            "run",
            schema,
            "--checks",
            "all",
            "--header",
            f"Authorization: {authorization}",
            "--exclude-path",
            "/auth/logout",
            "--seed",
            seed,
            "--request-timeout",
            str(request_timeout),
            "--no-color",
            "--max-time",
            str(max_time),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=max_time + 60,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        check=False,
    )
    output = result.stdout + result.stderr
    print(output)
    print(f"schemathesis: exit {result.returncode} in {time.monotonic() - started:.0f} s")
    return result.returncode, output


def assert_every_operation_tested(output: str) -> None:
    """Every selected operation was tested: none was left out by the time bound."""
    selected = re.search(r"Selected: (\d+)/\d+", output)
    tested = re.search(r"Tested: (\d+)", output)
    assert selected and tested, output[-3000:]
    assert int(tested[1]) == int(selected[1]) > 0, output[-3000:]
