"""The API through the edge, and the blue/green rollout (deploy.yml, rollback.yml,
status.yml) on the lab. Runs first (file order): test_monitoring relies on its order.

Everything goes to https://127.0.0.1:8443 (the edge's published port) or stays inside the
lab network. Load during deploys is bounded (a few workers, for as long as one deploy).
Bad releases are built from the running image on the controller (one file changed) and
deployed with deploy.yml like any release.
"""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import (
    Lab,
    api_client,
    app_state,
    order_journey,
    run_documented,
    run_playbook,
)
from tests.e2e.test_edge import ACCESS_LOG, edge_settings
from tests.e2e.test_tier_playbooks import inventory_without

pytestmark = pytest.mark.e2e

# Fast settings for the tests' deploys (the lab's inventory: a 10 s watch, 10 s drain;
# the role's defaults: 20 s, 30 s).
FAST = ("app_watch_seconds=8", "app_drain_seconds=3", "app_ready_timeout=40")


def active(lab: Lab) -> tuple[str, str]:
    """(colour, release) every app host agrees on."""
    states = [app_state(lab, h) for h in lab.groups["app"]]
    pairs = {
        (str(s["active"]), str(s["colours"][s["active"]]["release"]))  # type: ignore[index]
        for s in states
    }
    assert len(pairs) == 1, f"app hosts disagree: {pairs}"
    return pairs.pop()


class Load:
    """Bounded background load through the edge: `workers` clients in a loop until stopped
    (at most `limit_s`), counting answers by status and transport errors.

    The edge allows one client address 100 requests a minute (burst 20), and every
    request here comes from the controller's address: the clients together stay under
    that (PACE_S between requests per worker), so each request reaches an API colour and
    a 429 is a failure of the test's own pacing, not something to count as served. Each
    request carries an X-Request-ID with this load's prefix, so the edge's access log
    tells which colour answered it (`colours`)."""

    PACE_S = 2.5  # 3 workers: 1.2 requests/s, 72 a minute

    def __init__(self, path: str = "/menu-items", workers: int = 3, limit_s: float = 600):
        self.path, self.workers, self.limit_s = path, workers, limit_s
        self.status: Counter[str] = Counter()
        self.prefix = f"e2e-load-{uuid.uuid4().hex[:12]}"
        self._n = itertools.count()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        with api_client() as c:
            while not self._stop.is_set() and time.monotonic() < deadline:
                rid = f"{self.prefix}-{next(self._n)}"
                try:
                    answer = c.get(self.path, headers={"X-Request-ID": rid})
                    self.status[str(answer.status_code)] += 1
                except httpx.HTTPError as exc:
                    self.status[type(exc).__name__] += 1
                self._stop.wait(self.PACE_S)

    def __enter__(self) -> Load:
        self._started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        self.seconds = time.monotonic() - self._started

    @property
    def rate(self) -> float:
        """Requests per second the clients sent, over the whole load."""
        return sum(self.status.values()) / max(self.seconds, 1e-6)

    @property
    def served(self) -> int:
        return sum(n for k, n in self.status.items() if k.startswith("2"))

    @property
    def failed(self) -> int:
        return sum(self.status.values()) - self.served

    def colours(self, lab: Lab) -> Counter[str]:
        """How many of this load's requests each colour answered (the edge's access log:
        the upstream port is the colour's)."""
        ports = {str(p): c for c, p in edge_colour_ports().items()}
        out = lab.ssh(
            lab.groups["edge"][0], f'grep -hF \'"request_id":"{self.prefix}-\' {ACCESS_LOG}'
        ).stdout
        seen: Counter[str] = Counter()
        for line in out.splitlines():
            upstream = str(json.loads(line).get("upstream_addr") or "")
            seen[ports.get(upstream.rsplit(":", 1)[-1], f"not a colour: {upstream!r}")] += 1
        return seen

    def hosts(self, lab: Lab) -> Counter[str]:
        """How many of this load's requests each app host answered (the last upstream the
        edge tried: a refused one comes first in upstream_addr)."""
        by_address = {lab.hosts[h].address: h for h in lab.groups["app"]}
        out = lab.ssh(
            lab.groups["edge"][0], f'grep -hF \'"request_id":"{self.prefix}-\' {ACCESS_LOG}'
        ).stdout
        seen: Counter[str] = Counter()
        for line in out.splitlines():
            last = str(json.loads(line).get("upstream_addr") or "").split(",")[-1].strip()
            seen[by_address.get(last.rsplit(":", 1)[0], f"not an app host: {last!r}")] += 1
        return seen


def edge_colour_ports() -> dict[str, int]:
    return {str(c): int(p) for c, p in edge_settings()["nginx_colour_ports"].items()}


def derived_release(lab: Lab, tag_suffix: str, dockerfile_tail: str, tmp: Path) -> list[str]:
    """Build an image from the active one with `dockerfile_tail`, save it; deploy vars."""
    _, release = active(lab)
    state = app_state(lab, lab.groups["app"][0])
    base = state["colours"][state["active"]]["image"]  # type: ignore[index]
    tag = f"zapora/api:{release}-{tag_suffix}"
    build = subprocess.run(
        ["docker", "build", "-q", "-t", tag, "-"],
        input=f"FROM {base}\n{dockerfile_tail}\n",
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    image_id = build.stdout.strip().removeprefix("sha256:")[:12]
    new_release = f"{release}-{tag_suffix}-{image_id}"
    archive = tmp / f"{tag_suffix}.tar"
    subprocess.run(["docker", "save", "-o", str(archive), tag], check=True, timeout=300)
    return [f"app_image={tag}", f"app_release={new_release}", f"app_image_archive={archive}"]


def test_api_answers_through_the_edge(lab: Lab) -> None:
    with api_client() as c:
        r = c.get("/health/ready")
    assert r.status_code == 200, r.text
    # The replica is reported too (informational): in the lab it runs, so it is ok.
    assert r.json()["checks"] == {
        "database": "ok",
        "migrations": "ok",
        "redis": "ok",
        "replica": "ok",
    }


def test_register_login_menu_order_and_worker(lab: Lab) -> None:
    order_journey(lab)


def test_status_reports_colour_release_and_edges(lab: Lab) -> None:
    colour, release = active(lab)
    result = run_documented("status.yml", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert release in result.stdout
    assert f"routes to {colour}" in result.stdout


@pytest.mark.lab(shared=("data",), exclusive=("app",))  # a deploy: switches colours, loads the edge
def test_second_deploy_of_the_same_release_changes_nothing(lab: Lab) -> None:
    before = active(lab)
    result = run_playbook("deploy.yml", *FAST)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "nothing to deploy" in result.stdout
    assert active(lab) == before


def _colours_running(lab: Lab, host: str) -> str:
    """The ids of the host's running API colour containers (blue and green)."""
    ids = "docker ps -q --filter label=com.docker.compose.project.working_dir=/opt/zapora/"
    return lab.ssh(host, f"{ids}blue; {ids}green").stdout.strip()


def _edge_lists(lab: Lab, host: str) -> bool:
    """Whether the edge's upstreams name the host's address."""
    address = lab.hosts[host].address
    conf = lab.ssh(lab.groups["edge"][0], "cat /etc/nginx/zapora/upstreams.conf").stdout
    return f" {address}:" in conf


def assert_joined(
    lab: Lab,
    host: str,
    deploy: subprocess.CompletedProcess[str],
    load: Load,
    before: tuple[str, str],
) -> None:
    """After "Add an app host"'s deploy.yml of the active release (`before`: its colour and
    release), run under `load`: the deploy named the host as joining, the other colour now
    serves the same release, no request failed, and the edge sends the host requests."""
    colour, release = before
    assert deploy.returncode == 0, deploy.stdout[-3000:]
    said = " ".join(deploy.stdout.split())
    assert f"No colour yet on {host}:" in said, deploy.stdout[-3000:]
    assert active(lab) == ("green" if colour == "blue" else "blue", release)
    assert load.failed == 0, f"clients saw failures: {dict(load.status)}"
    with Load() as served:
        time.sleep(8)
    assert served.failed == 0, dict(served.status)
    assert served.hosts(lab)[host] > 0, dict(served.hosts(lab))


def remove_under_load(lab: Lab, host: str, overlay: Path) -> None:
    """docs/operator-guide.md, "Remove an app host", step 2, under load through the edge:
    app-host-remove.yml with `overlay` (the host out of the app group). No request fails,
    the edge stops listing the host, its colours stop, its deploy state is put aside, and
    afterwards no request reaches it."""
    state = "/var/lib/zapora/rollout/state.json"
    with Load() as load:
        started = time.monotonic()
        removed = run_documented(
            "app-host-remove.yml", inventory=overlay, timeout=300, app_remove_hosts=[host]
        )
        took = time.monotonic() - started
        time.sleep(2)
    print(f"{host} removed under load (app-host-remove.yml {took:.0f} s): {dict(load.status)}")
    assert removed.returncode == 0, removed.stdout[-3000:] + removed.stderr[-1000:]
    assert load.failed == 0, f"clients saw failures: {dict(load.status)}"
    assert not _edge_lists(lab, host), "the edge still lists the removed host"
    assert _colours_running(lab, host) == "", "the removed host still runs a colour"
    aside = lab.ssh(host, f"test ! -e {state} && test -e {state}.removed", check=False)
    assert aside.returncode == 0, "the removed host's deploy state was not put aside"
    with Load() as after:
        time.sleep(6)
    assert after.failed == 0 and after.served > 0, dict(after.status)
    assert host not in after.hosts(lab), dict(after.hosts(lab))


@pytest.mark.slow(
    reason="app-host-remove.yml, then edge.yml and deploy.yml (about 160 s on the lab); "
    "test_a_new_app_host_added_and_removed_under_load runs the removal and a new host's add"
)
@pytest.mark.lab(shared=("data",), exclusive=("app",))  # a deploy: switches colours, loads the edge
def test_an_app_host_removed_and_added_back_under_load(lab: Lab) -> None:
    """docs/operator-guide.md, "Remove an app host" then "Add an app host", under load
    through the edge: app-host-remove.yml with the host out of the app group, then, with
    the whole inventory, edge.yml and deploy.yml of the active release (the host has no
    colour any more, so the deploy is not a no-op and the host joins): the short way back
    for a host that was in service, which site.yml has not yet run without."""
    colour, release = active(lab)
    host = lab.groups["app"][-1]
    state = "/var/lib/zapora/rollout/state.json"
    overlay = inventory_without(host, groups=("app",), kept_in="app_removed")
    try:
        remove_under_load(lab, host, overlay)

        with Load() as back:
            edged = run_documented("edge.yml", timeout=600)
            joined = run_playbook("deploy.yml", *FAST)
            time.sleep(2)
        print(f"{host} added back (edge.yml, deploy.yml) under load: {dict(back.status)}")
        assert edged.returncode == 0, edged.stdout[-3000:]
        assert_joined(lab, host, joined, back, (colour, release))
    finally:
        # A test that failed half-way leaves the host serving as before.
        if not _edge_lists(lab, host):
            run_documented("edge.yml", timeout=600)
        lab.ssh(
            host,
            f"test -e {state} || {{ mv {state}.removed {state}; docker start $(docker ps -aq "
            f"--filter label=com.docker.compose.project.working_dir=/opt/zapora/{colour}); }}; "
            f"rm -f {state}.removed",
            check=False,
        )


def _bad_deploy(
    lab: Lab, tmp_path: Path, suffix: str, tail: str, *settings: str
) -> tuple[str, Load]:
    before = active(lab)
    extra = derived_release(lab, suffix, tail, tmp_path)
    with Load() as load:
        result = run_playbook("deploy.yml", *FAST, *settings, *extra)
        time.sleep(2)
    print(f"{suffix}: load during the deploy: {dict(load.status)}")
    assert result.returncode != 0, "the bad release was not refused"
    assert "failed and was undone" in result.stdout, result.stdout[-3000:]
    # A broken playbook must not pass for a refused release.
    assert "Error rendering" not in result.stdout, result.stdout[-3000:]
    assert active(lab) == before, "the old release is not the active one any more"
    lock = lab.ssh(lab.groups["app"][0], "test -e /var/lib/zapora/rollout/deploy.lock", check=False)
    assert lock.returncode != 0, "the deploy lock was left behind"
    # The old release serves: ready through the edge (a readiness probe may time out
    # once under this machine's load, so a few seconds' grace, every answer kept).
    answers = []
    with api_client() as c:
        for _ in range(10):
            r = c.get("/health/ready")
            answers.append(f"{r.status_code} {r.text[:200]}")
            if r.status_code == 200:
                break
            time.sleep(2)
    assert answers[-1].startswith("200"), f"the old release is not ready: {answers}"
    return result.stdout, load


@pytest.mark.lab(shared=("data",), exclusive=("app",))  # a deploy: switches colours, loads the edge
def test_release_never_ready_is_refused_and_old_keeps_serving(lab: Lab, tmp_path: Path) -> None:
    # Readiness compares the schema with the release's head: a head that never exists.
    tail = (
        "USER root\n"
        "RUN sed -i 's/^_HEAD = head_revision()/_HEAD = \"never\"/' "
        "/opt/zapora/zapora/services/health.py\nUSER zapora"
    )
    # A release that can never be ready is refused at the end of the readiness wait,
    # however long: 15 s (not FAST's 40) is enough to show it and keeps CI short.
    out, load = _bad_deploy(lab, tmp_path, "notready", tail, "app_ready_timeout=15")
    assert "Wait until the colour is ready" in out
    assert load.failed == 0, f"clients saw failures: {dict(load.status)}"
    # The old colour answered every request: the bad one never took traffic.
    active_colour = active(lab)[0]
    assert set(load.colours(lab)) == {active_colour}, dict(load.colours(lab))
    assert load.served >= 10, f"too few requests to say anything: {dict(load.status)}"


# Passes the smoke test (straight to its port) but answers 500 to every request that came
# through the edge (X-Forwarded-For set): broken only under real traffic. It sits inside
# the metrics middleware, so the API's own counters see the 500s as the watch does.
BROKEN_UNDER_TRAFFIC = """
import zapora.api.app as m
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import PlainTextResponse

_create_app = m.create_app


async def _broken(request, call_next):
    if request.headers.get("x-forwarded-for"):
        return PlainTextResponse("broken release", status_code=500)
    return await call_next(request)


def create_app(*args, **kwargs):
    app = _create_app(*args, **kwargs)
    app.user_middleware.insert(1, Middleware(BaseHTTPMiddleware, dispatch=_broken))
    return app


m.create_app = create_app
"""


# Seconds of client traffic a release failing under traffic may see after its 20th request
# per host: one 2 s sampling interval of the watch, then the switch back (docs/rollout.md).
WATCH_EXPOSURE_S = 6


@pytest.mark.lab(shared=("data",), exclusive=("app",))  # a deploy: switches colours, loads the edge
def test_release_failing_after_switch_is_switched_back(lab: Lab, tmp_path: Path) -> None:
    encoded = base64.b64encode(BROKEN_UNDER_TRAFFIC.encode()).decode()
    tail = f"USER root\nRUN echo {encoded} | base64 -d > /opt/zapora/sitecustomize.py\nUSER zapora"
    out, load = _bad_deploy(lab, tmp_path, "5xx", tail)
    # The watch judged the colour (not a template error inside the watch task).
    assert "requests with 5xx" in out, out[-3000:]
    # Requests that reached the bad colour before the watch caught it did fail: the cost
    # of a fault only real traffic shows. docs/rollout.md bounds it: the watch needs 20
    # requests on an app host, samples every 2 s, and the switch back follows; so at most
    # 20 per app host plus WATCH_EXPOSURE_S of the clients' traffic.
    bound = 20 * len(lab.groups["app"]) + load.rate * WATCH_EXPOSURE_S
    print(f"5xx release: {load.failed} requests failed while it was live (bound {bound:.0f})")
    five_xx = sum(n for k, n in load.status.items() if k.startswith("5"))
    assert five_xx > 0, f"no client saw the bad release: was it ever live? {dict(load.status)}"
    assert load.failed <= bound, f"clients saw {load.failed} failures, more than {bound:.0f}"
    assert "429" not in load.status, f"the load outran the edge's limit: {dict(load.status)}"


@pytest.mark.lab(shared=("data",), exclusive=("app",))  # a deploy: switches colours, loads the edge
def test_rollback_returns_to_the_previous_release(lab: Lab, tmp_path: Path) -> None:
    colour, release = active(lab)
    extra = derived_release(lab, "next", "LABEL org.zapora.e2e=next", tmp_path)
    with Load() as load:
        deployed = run_playbook("deploy.yml", *FAST, *extra)
        assert deployed.returncode == 0, deployed.stdout[-3000:]
        new_colour, new_release = active(lab)
        assert new_colour != colour and new_release != release
        # As the docs show it: no options (the lab inventory's drain, 10 s).
        rolled = run_documented("rollback.yml")
        time.sleep(2)
    assert rolled.returncode == 0, rolled.stdout[-3000:]
    assert active(lab) == (colour, release)
    colours = load.colours(lab)
    print(f"deploy + rollback under load: {dict(load.status)}, by colour {dict(colours)}")
    assert load.failed == 0, f"clients saw failures: {dict(load.status)}"
    # Both switches happened under this load: each colour answered some of it, and the
    # edge's log names no other upstream.
    assert set(colours) == {colour, new_colour}, dict(colours)
    assert sum(colours.values()) == load.served, (dict(colours), dict(load.status))
    history = lab.ssh(lab.groups["app"][0], "tail -n 2 /var/lib/zapora/rollout/history.jsonl")
    last = [json.loads(line) for line in history.stdout.splitlines()]
    assert [e["action"] for e in last] == ["deploy", "rollback"]
    assert last[1]["release"] == release and last[1]["previous"] == new_release
