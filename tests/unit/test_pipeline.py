"""The pipeline an adopter runs (docs/pipeline.md): thin workflows over make targets,
actionlint in make lint, make smoke, the staging gate of make promote, make audit's honesty.

Everything here runs on the controller in seconds: local HTTP stubs on 127.0.0.1, the gate's
task file against a temporary state directory.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from tests.documented import REPO, documented, parse, run_make
from tests.unit.local_playbook import run_playbook

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
VENV_BIN = Path(sys.executable).parent


def _lint_recipe_line(tool: str) -> str:
    text = (REPO / "Makefile").read_text()
    recipe = re.search(r"^lint:.*?\n((?:\t.*\n)+)", text, re.M)
    assert recipe, "the Makefile has no lint recipe"
    lines = [line.strip() for line in recipe.group(1).splitlines()]
    found = [line for line in lines if line.startswith(tool + " ")]
    assert found, f"make lint runs no {tool}: {lines}"
    return found[0]


def _actionlint(*paths: Path) -> subprocess.CompletedProcess[str]:
    """make lint's actionlint step, as the Makefile writes it, on the given files."""
    line = _lint_recipe_line("actionlint")
    assert "$(WORKFLOWS)" in line, line
    command = line.replace("$(WORKFLOWS)", " ".join(str(p) for p in paths))
    return subprocess.run(
        command.split(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(REPO)},
    )


BROKEN_WORKFLOW = """\
name: broken
"on": push
jobs:
  deploy:
    needs: build
    runs-on: ubuntu-24.04
    env:
      KEY_FILE: ${{ runner.temp }}/key
    steps:
      - uses: actions/checkout@v4
        with:
          reference: main
      - run: make stage RELEASE=${{ steps.release.outputs.id }}
"""


def test_make_lint_actionlint_step_fails_on_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN_WORKFLOW)
    result = _actionlint(broken)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    # Each mistake is named: a job that does not exist, a context used where it is not
    # available, an input the action does not have, a step output nobody sets.
    assert 'needs job "build" which does not exist' in out, out
    assert 'context "runner" is not allowed here' in out, out
    assert 'input "reference" is not defined' in out, out
    assert 'property "release" is not defined' in out, out


def test_the_workflows_pass_make_lint_actionlint_step() -> None:
    assert {p.name for p in WORKFLOWS} == {"ci.yml", "cd.yml"}
    result = _actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


# What a workflow may run besides make: the vault password to a file (a secret only the
# runner holds). Anything else belongs in a make target, which also runs on a laptop.
PLUMBING = re.compile(r'^install -m 0600 /dev/stdin "\$RUNNER_TEMP/[a-z-]+" <<<"\$[A-Z_]+"$')


def _steps() -> Iterator[tuple[str, str, dict[str, object]]]:
    for path in WORKFLOWS:
        workflow = yaml.safe_load(path.read_text())
        for job_name, job in workflow["jobs"].items():
            for step in job["steps"]:
                yield path.name, job_name, step


def test_workflows_are_thin_every_run_step_is_a_documented_make_target() -> None:
    docs = documented()
    makefile = (REPO / "Makefile").read_text()
    seen = set()
    for workflow, job, step in _steps():
        if "uses" in step:
            # Actions are pinned to a release, never a branch.
            assert re.search(r"@v?\d", str(step["uses"])), f"{workflow} {job}: {step['uses']}"
            continue
        run = str(step["run"]).strip()
        if PLUMBING.match(run):
            continue
        assert run.startswith("make ") and "\n" not in run, f"{workflow} {job}: {run!r}"
        shape = parse(re.sub(r"\$\{\{[^}]*\}\}|\"\$[A-Z_]+\"", "X", run))
        assert shape, run
        assert re.search(rf"^{shape.name}:.*## ", makefile, re.M), f"no make {shape.name} target"
        # The docs show it, so tests/unit/test_documented_commands.py holds it to be run
        # by make test or a test, or listed as not run with its reason.
        assert shape in docs, f"{workflow} {job}: `{shape}` is not shown in docs/pipeline.md"
        seen.add(shape.name)
    assert {"lint", "sast", "audit", "test-unit", "test-app", "load-test", "api-image"} <= seen
    assert {"release-id", "stage", "openapi", "promote"} <= seen


def test_production_waits_for_approval_and_deploys_the_release_staging_passed() -> None:
    cd = yaml.safe_load((REPO / ".github" / "workflows" / "cd.yml").read_text())
    production = cd["jobs"]["production"]
    assert production["needs"] == "staging"
    # Required reviewers are set on the `production` environment (docs/pipeline.md).
    assert production["environment"]["name"] == "production"
    runs = [s["run"] for s in production["steps"] if "run" in s]
    assert runs[-1].startswith("make promote RELEASE=${{ needs.staging.outputs.release }} ")
    # No build in production: the archive is CI's artifact, downloaded.
    assert not any("api-image" in r for r in runs), runs
    assert any(
        s.get("uses", "").startswith("actions/download-artifact@") for s in production["steps"]
    )


# --- make smoke against stubs on 127.0.0.1 ---------------------------------------------

Handler = Callable[[str, str], tuple[int, object]]


@contextmanager
def stub_api(answer: Handler) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering every request with answer(method, path)."""
    seen: list[str] = []

    class Stub(http.server.BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            seen.append(f"{self.command} {self.path}")
            status, body = answer(self.command, self.path.split("?")[0])
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _reply

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


ITEM = {"id": "5f0c7a52-1111-4222-8333-944455556666", "name": "Pierogi", "price_minor": 1250}
ORDER = {"id": "0a1b2c3d-1111-4222-8333-944455556666", "total_minor": 2500, "currency": "PLN"}


def _healthy(method: str, path: str) -> tuple[int, object]:
    return {
        ("GET", "/health/ready"): (200, {"status": "ready"}),
        ("POST", "/auth/register"): (201, {"id": "u"}),
        ("POST", "/auth/login"): (200, {"access_token": "t"}),
        ("GET", "/menu-items"): (200, {"items": [ITEM]}),
        ("POST", "/orders"): (201, ORDER),
        ("GET", f"/orders/{ORDER['id']}"): (200, ORDER),
    }.get((method, path), (404, {"title": "Not Found"}))


def test_make_smoke_passes_against_an_api_that_answers_the_journey() -> None:
    with stub_api(_healthy) as url:
        result = run_make("smoke", URL=url, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"smoke ok against {url}: order {ORDER['id']}" in result.stdout, result.stdout


def test_make_smoke_fails_against_a_release_that_answers_5xx() -> None:
    with stub_api(lambda method, path: (500, {"title": "Internal Server Error"})) as url:
        result = run_make("smoke", URL=url, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "smoke FAILED at ready: GET /health/ready answered 500" in out, out
    assert "smoke ok" not in out, out


def test_make_smoke_fails_when_only_placing_the_order_answers_5xx() -> None:
    def orders_broken(method: str, path: str) -> tuple[int, object]:
        if (method, path) == ("POST", "/orders"):
            return 502, {"title": "Bad Gateway"}
        return _healthy(method, path)

    with stub_api(orders_broken) as url:
        result = run_make("smoke", URL=url, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "smoke FAILED at place an order: POST /orders answered 502" in out, out


def test_make_smoke_fails_when_the_order_read_back_is_wrong() -> None:
    def wrong_total(method: str, path: str) -> tuple[int, object]:
        if method == "GET" and path.startswith("/orders/"):
            return 200, {**ORDER, "total_minor": 1}
        return _healthy(method, path)

    with stub_api(wrong_total) as url:
        result = run_make("smoke", URL=url, timeout=300)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "with total 2500" in result.stderr, result.stderr


def test_make_smoke_without_url_says_how_to_call_it() -> None:
    result = run_make("smoke", timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "usage: make smoke URL=" in result.stdout


# --- the staging gate (make promote refuses a release that has not passed staging) ------

GATE_PLAYBOOK = """\
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: app
        tasks_from: release_gate
"""

RUNNING = "g0123456789ab-0123456789ab"
OTHER = "g0123456789ab-ba9876543210"


def _state_dir(tmp_path: Path, history: list[dict[str, object]]) -> Path:
    state = tmp_path / "rollout"
    state.mkdir()
    (state / "state.json").write_text(
        json.dumps(
            {
                "active": "green",
                "colours": {"blue": {"release": OTHER}, "green": {"release": RUNNING}},
            }
        )
    )
    (state / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    return state


def _gate(tmp_path: Path, state: Path, action: str, release: str) -> str:
    result = run_playbook(
        tmp_path,
        GATE_PLAYBOOK,
        {"app_state_dir": str(state), "app_release_gate": action, "app_release": release},
    )
    out = result.stdout + result.stderr
    return ("ok: " if result.returncode == 0 else "failed: ") + out


def test_promotion_refuses_a_release_that_has_not_passed_staging(tmp_path: Path) -> None:
    # RUNNING was deployed (deploy.yml's own line) but never passed smoke; OTHER did.
    state = _state_dir(
        tmp_path,
        [
            {"action": "staging-passed", "result": "ok", "release": OTHER},
            {"action": "deploy", "result": "ok", "release": RUNNING},
        ],
    )
    out = _gate(tmp_path, state, "check", RUNNING)
    assert out.startswith("failed: "), out
    assert f"Release {RUNNING} has not passed staging on localhost: refusing to promote" in out
    assert f"Releases that passed here: {OTHER}" in out, out
    assert _gate(tmp_path, state, "check", OTHER).startswith("ok: ")


def test_a_pass_is_recorded_only_for_the_release_staging_runs(tmp_path: Path) -> None:
    state = _state_dir(tmp_path, [{"action": "deploy", "result": "ok", "release": RUNNING}])
    out = _gate(tmp_path, state, "record", OTHER)
    assert out.startswith("failed: "), out
    assert f"runs release '{RUNNING}', not {OTHER}" in out, out

    assert _gate(tmp_path, state, "record", RUNNING).startswith("ok: ")
    lines = [json.loads(line) for line in (state / "history.jsonl").read_text().splitlines()]
    assert [(h["action"], h["release"]) for h in lines] == [
        ("deploy", RUNNING),
        ("staging-passed", RUNNING),
    ]
    assert lines[-1]["colour"] == "green"
    assert _gate(tmp_path, state, "check", RUNNING).startswith("ok: ")


def test_the_gate_names_a_wrong_action(tmp_path: Path) -> None:
    state = _state_dir(tmp_path, [])
    out = _gate(tmp_path, state, "skip", RUNNING)
    assert out.startswith("failed: ") and "app_release_gate must be record or check" in out, out


# --- make audit, make release-id's script, make openapi ---------------------------------


def test_make_audit_says_it_cannot_run_here_and_fails() -> None:
    result = run_make("audit", timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "NOT RUN: make audit queries PyPI's vulnerability service" in out, out
    assert "pip-audit" not in out.split("NOT RUN", 1)[0], out
    assert "No known vulnerabilities" not in out and " ok" not in out, out


def _release_id(folder: Path, *names: str) -> subprocess.CompletedProcess[str]:
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"archive")
    output = folder.parent / "github-output"
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "release_id.py"), str(folder), str(output)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_release_id_reads_the_one_archive_and_refuses_to_guess(tmp_path: Path) -> None:
    one = _release_id(tmp_path / "one", f"zapora-api-{RUNNING}.tar")
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() == RUNNING
    assert (tmp_path / "github-output").read_text() == f"release={RUNNING}\n"

    two = _release_id(tmp_path / "two", f"zapora-api-{RUNNING}.tar", f"zapora-api-{OTHER}.tar")
    assert two.returncode == 1 and "exactly one release archive" in two.stderr, two.stderr
    none = _release_id(tmp_path / "none")
    assert none.returncode == 1 and "found none" in none.stderr, none.stderr


def test_make_openapi_writes_the_document_zap_scans() -> None:
    result = run_make("openapi", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads((REPO / ".cache" / "openapi.json").read_text())
    assert document["openapi"].startswith("3.")
    assert {"/auth/login", "/menu-items", "/orders", "/orders/{order_id}"} <= set(document["paths"])


# --- make load-test's thresholds -----------------------------------------------------------


def test_load_test_thresholds_fail_on_p99_error_rate_and_too_few_requests() -> None:
    spec = importlib.util.spec_from_file_location("load_check", REPO / "bench" / "load_check.py")
    assert spec and spec.loader
    load_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load_check)
    good = {"requests": 1000.0, "errors": 5.0, "socket_errors": 0.0, "p99_ms": 120.0}
    assert load_check.verdicts({"GET /menu-items": good}) == []
    failed = load_check.verdicts(
        {
            "GET /menu-items": {**good, "p99_ms": 501.0},
            "GET /orders/{id}": {**good, "errors": 8.0, "socket_errors": 3.0},
            "POST /orders": {**good, "requests": 99.0, "errors": 0.0},
        }
    )
    assert failed == [
        "GET /menu-items: p99 501.0 ms > 500 ms",
        "GET /orders/{id}: error rate 1.10% > 1.00%",
        "POST /orders: 99 requests < 100",
    ], failed
