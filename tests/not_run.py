"""Record a check that cannot run on this machine, for the summary line of `make test`.

A test that can check only part of something (an image that cannot be pulled here, a
kernel module this machine lacks) checks what it can, calls `record(what, why)` for the
rest, and `scripts/test-summary.py` lists every such line above the total.
"""

from __future__ import annotations

import os
from pathlib import Path

RESULTS = Path(
    os.environ.get(
        "ZAPORA_TEST_RESULTS", Path(__file__).resolve().parents[1] / ".cache" / "test-results"
    )
)


def record(what: str, why: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "not-run.txt").open("a") as out:
        out.write(f"{what}: {why}\n")
