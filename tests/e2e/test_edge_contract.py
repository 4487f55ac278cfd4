"""The API's contract as clients see it: through the lab's edge (TLS, the WAF, the rate
limit), not straight to the app as tests/app/test_contract.py runs it (issue 19).

The document is the checkout's (`zapora openapi`), whose image the lab runs. Every request
comes from the controller's address, whose bucket at the edge allows 100 requests a minute
with a burst of 20: the test holds the app tier exclusively
(like the rate-limit test in test_edge.py), stays under that pace with Schemathesis's own
`--rate-limit`, and waits for the bucket to refill before it returns."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests import schemathesis_run
from tests.e2e.conftest import API_URL, EDGE_CA, Lab, api_login, edge_tls, lab_secret

pytestmark = pytest.mark.e2e

# Bounded: the fuzzing phase with one example per operation (91-93 requests for the 24
# operations: about 50 s at 2 a second); the coverage
# phase's every-boundary cases would need many minutes at the edge's pace. A 400 answers a
# well-formed cursor the API did not issue (documented), as in tests/app/test_contract.py;
# 429 (the edge's limit, the per-user write limit) and the WAF's 403 are documented
# answers to any request.
CONFIG = """
[[operations]]
include-path-regex = "^/(orders|audit-events)$"
include-method = "GET"
checks.positive_data_acceptance.expected-statuses = [
  "2xx", "400", "401", "403", "404", "409", "429",
]

[[operations]]
exclude-path-regex = "^/(orders|audit-events)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "429"]
"""
MAX_TIME_S = 45


def _document() -> dict[str, object]:
    """The checkout's document (`zapora openapi`, which needs no secrets): the lab runs the
    image built from this checkout (`make api-image`), so it describes what the edge fronts.
    (`docker exec` into the api container fails in the lab's nested Docker: setns.)"""
    out = subprocess.run(
        [sys.executable, "-m", "zapora.cli", "openapi"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    doc: dict[str, object] = json.loads(out)
    return doc


@pytest.mark.lab(exclusive=("app",))
def test_the_contract_holds_through_the_edge(lab: Lab, tmp_path: Path) -> None:
    # The controller: 1 login, 4 TRACE, then Schemathesis (about 93 requests at 2 a second),
    # then 15 s for the bucket: about 75 s.
    doc = _document()
    paths: dict[str, dict[str, object]] = doc["paths"]  # type: ignore[assignment]
    with httpx.Client(base_url=API_URL, verify=edge_tls(), timeout=10) as c:
        admin = api_login(c, "admin@zapora.example.com", lab_secret("app_admin_password"))
        # nginx refuses TRACE itself (before any location): RFC 9110 wants Allow on a 405,
        # naming the methods the path serves. A path of each kind (the whole table is
        # checked against the API's routes in tests/app/test_edge_contract.py).
        probed = ("/orders", "/orders/{order_id}", "/users/me", "/users/{user_id}")
        for path, operations in ((p, paths[p]) for p in probed):
            concrete = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
            r = c.request("TRACE", concrete)
            want = ", ".join(sorted(m.upper() for m in operations if m != "head"))
            assert r.status_code == 405, (path, r.status_code)
            assert r.headers.get("allow") == want, (path, r.headers.get("allow"))
            assert r.headers["content-type"] == "application/problem+json", path
    # 2 requests a second against a refill of 100 a minute drains the burst of 20 by about
    # 0.33 a second: the run's ~50 s fit in a full bucket, so the 5 requests above are
    # given back first (3 s).
    time.sleep(4)
    (tmp_path / "openapi.json").write_text(json.dumps(doc))
    returncode, output = schemathesis_run.run(
        str(tmp_path / "openapi.json"),
        CONFIG,
        tmp_path,
        admin["Authorization"],
        seed="20261202",
        request_timeout=10,
        max_time=MAX_TIME_S,
        extra=(
            "--url",
            API_URL,
            "--tls-verify",
            str(EDGE_CA),
            "--phases",
            "examples,fuzzing",
            "--max-examples",
            "1",
            "--rate-limit",
            "2/s",
        ),
    )
    assert returncode == 0, output[-6000:]
    schemathesis_run.assert_every_operation_tested(output)
    # Not a hollow run: the operations were answered, not mostly refused by the rate limit.
    assert "Rate limited" not in output, output[-3000:]
    # 100/min refills the 20-request burst in 12 s: the next test's requests get through.
    time.sleep(15)
    with httpx.Client(base_url=API_URL, verify=edge_tls(), timeout=10) as c:
        assert c.get("/health/live").status_code == 200
