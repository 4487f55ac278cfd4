"""No generated secret crosses the lab's network in clear.

scripts/e2e-suite.sh captures every packet to, from and between the lab's hosts (all but
SSH) on this machine for the whole end-to-end run, the edge's upstream to the API colours
included (TLS 1.3 since this test found the admin's login on it in clear, issue 20):
order journeys through the edge, the deploys and their rollbacks,
a Patroni switchover and failover, a Sentinel failover and Redis's rolling restart,
backups and restores, the secrets' rotation, Prometheus's scrapes. This test then
searches the capture for the value of every file under .lab/secrets/ (the secrets as they
are after the run: a rotated secret's earlier value is not searched for). Before the
tests, the script sent a canary in clear to the edge's plain HTTP port: the search must
find it, or it would prove nothing.

The search is over the raw capture (`grep -F`): a value split across two TCP segments
would be missed; the lab's secrets are 24-48 characters, and every hop that carries one
is TLS (docs/operator-guide.md, "Internal TLS"), so nothing of them should be
in the capture at all.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import REPO
from tests.e2e.test_secret_exposure import _secrets

pytestmark = [pytest.mark.e2e]


def _capture() -> tuple[Path, str]:
    path = os.environ.get("ZAPORA_LAB_CAPTURE")
    canary = os.environ.get("ZAPORA_LAB_CAPTURE_CANARY")
    assert path and canary, (
        "no capture to search: this test reads the one scripts/e2e-suite.sh takes during the "
        "end-to-end run (make test-e2e-suite, make test-e2e)"
    )
    capture = Path(path)
    assert capture.is_file() and capture.stat().st_size > 0, f"{capture} is missing or empty"
    return capture, canary


def _found(capture: Path, values: list[str]) -> set[str]:
    """The values that occur in the capture's bytes (grep -F, fixed strings; the values
    reach grep on its standard input, never its command line)."""
    result = subprocess.run(
        ["grep", "-a", "-o", "-F", "-f", "-", str(capture)],
        input="\n".join(values).encode(),
        capture_output=True,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr.decode()[-500:]
    return {line.decode(errors="replace") for line in result.stdout.splitlines()}


def test_no_secret_crosses_the_lab_network_in_clear() -> None:
    capture, canary = _capture()
    values = _secrets()
    found = _found(capture, [canary, *values.values()])
    size = capture.stat().st_size
    print(f"searched {size / 1e6:.1f} MB of the lab's traffic for {len(values)} secrets")
    assert canary in found, (
        f"the canary sent in clear to the edge is not in the capture ({size} bytes): "
        "the capture or its search does not see the lab's traffic"
    )
    # The edge's upstream to the API colours is in what was searched (its first packet
    # stops tcpdump's read, a moment into the capture).
    edge = yaml.safe_load((REPO / "roles/nginx/defaults/main.yml").read_text())
    upstream = " or ".join(f"tcp port {port}" for port in edge["nginx_colour_ports"].values())
    first = subprocess.run(
        ["tcpdump", "-r", str(capture), "-nn", "-c", "1", upstream],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert first.stdout.strip(), f"no packet to the API colours ({upstream}) in the capture"
    hits = sorted(name for name, value in values.items() if value in found)
    assert not hits, f"secret values seen in clear on the lab's network: {hits}"
