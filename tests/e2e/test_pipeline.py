"""The CD half of the pipeline on the lab, which is this repository's staging
(inventory/staging links to inventory/lab; docs/pipeline.md).

- `make smoke URL=...` through the edge: sign in, read the menu, place and read an order.
- `make promote` refuses a release that never passed staging, before touching anything.
- (slow) the lab's active release through `make stage` and `make promote`, with the lab as
  staging and as production: a noop deploy each, the pass recorded, the same release id.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.documented import run_make
from tests.e2e.conftest import (
    API_URL,
    REPO,
    Lab,
    api_client,
    api_login,
    app_state,
    lab_secret,
    new_menu_item,
)

pytestmark = pytest.mark.e2e


def _available_item(c: httpx.Client) -> None:
    """Smoke orders the first available menu item; a fresh lab has no menu yet."""
    listed = c.get("/menu-items", params={"available": "true"})
    assert listed.status_code == 200, listed.text
    if listed.json()["items"]:
        return
    new_menu_item(c, "smoke")


def _history(lab: Lab, host: str) -> list[dict[str, object]]:
    out = lab.ssh(host, "cat /var/lib/zapora/rollout/history.jsonl").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.lab(shared=("app", "data"))
def test_make_smoke_passes_through_the_lab_edge(lab: Lab) -> None:
    with api_client() as c:
        _available_item(c)
    result = run_make("smoke", URL=API_URL, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    placed = re.search(r"smoke ok against \S+: order ([0-9a-f-]{36}): ", result.stdout)
    assert placed, result.stdout
    # The order is really there: the admin reads it through the edge.
    with api_client() as c:
        admin = api_login(c, "admin@zapora.example.com", lab_secret("app_admin_password"))
        order = c.get(f"/orders/{placed.group(1)}", headers=admin)
    assert order.status_code == 200, order.text
    assert order.json()["status"] == "pending", order.json()


@pytest.mark.lab(shared=("app",))
def test_make_promote_refuses_a_release_that_has_not_passed_staging(lab: Lab) -> None:
    app1 = lab.groups["app"][0]
    before = (app_state(lab, app1), len(_history(lab, app1)))
    never_staged = "g000000000000-000000000000"
    result = run_make("promote", RELEASE=never_staged, INVENTORY="inventory/lab", timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert f"Release {never_staged} has not passed staging on {app1}: refusing to promote" in out
    # Refused at the gate: deploy.yml never started, nothing on the hosts changed.
    assert "Deploy | the release to roll out" not in out, out
    assert (app_state(lab, app1), len(_history(lab, app1))) == before


@pytest.mark.slow(reason="make stage and make promote: two deploy.yml runs (noops), 35 s")
@pytest.mark.lab(shared=("data",), exclusive=("app",))
def test_the_active_release_goes_through_stage_and_promote(lab: Lab) -> None:
    app1 = lab.groups["app"][0]
    state = app_state(lab, app1)
    active = state["active"]
    assert isinstance(active, str), state
    release = state["colours"][active]["release"]  # type: ignore[index]
    archive = REPO / ".cache" / "releases" / f"zapora-api-{release}.tar"
    assert archive.exists(), f"{archive} is missing: make lab builds it in this checkout"
    with api_client() as c:
        _available_item(c)

    staged = run_make("stage", RELEASE=release, URL=API_URL, timeout=900)
    assert staged.returncode == 0, staged.stdout[-3000:] + staged.stderr[-2000:]
    assert "smoke ok against" in staged.stdout, staged.stdout[-3000:]
    for host in lab.groups["app"]:
        last = _history(lab, host)[-1]
        assert (last["action"], last["release"], last["colour"]) == (
            "staging-passed",
            release,
            active,
        )

    promoted = run_make("promote", RELEASE=release, INVENTORY="inventory/lab", timeout=900)
    assert promoted.returncode == 0, promoted.stdout[-3000:] + promoted.stderr[-2000:]
    # The same release id, not a rebuild: deploy.yml found it already active.
    assert f"Release {release} is already active" in promoted.stdout, promoted.stdout[-3000:]
    assert app_state(lab, app1)["active"] == active
