"""Every command the docs show is run as the docs show it, by CI or by a test.

Documented commands come from README.md and docs/ (tests/documented.py). A command is
covered when CI runs it itself (the steps of `make test` and `make lab`, `.ci/run`'s
`make lab-down`), when a test runs it through `run_documented` / `run_make` (found here by
reading the tests' source), or when NOT_RUN below says why it cannot run in CI; those are
listed as NOT RUN in `make test`'s summary. A run with flags that only add output (`--diff`,
`-v`) covers the documented form without them too: make test's lab converges with
`site.yml --diff -v` (its output is searched for secrets), the rotation test runs
`rotate-secrets.yml --diff -v`.
"""

from __future__ import annotations

import ast
import re

from tests.documented import REPO, Shape, documented, parse, run_make
from tests.not_run import record

# Documented, not run by CI, and why. A line here is a decision, not a skip: the summary
# lists each one.
NOT_RUN = {
    "make bench": "a benchmark (minutes of load); its figures are in docs/performance.md",
    "make bench-lists": "a benchmark (builds 1M-row tables); figures in docs/performance.md",
    "make bench-rollout": "a benchmark (20 deploys under load); figures in docs/rollout.md",
    "make bench-edge": "a benchmark (wrk on the lab's edge); figures in docs/performance.md",
    "make bench-failover": "a benchmark (data-tier faults under 4 order clients through the "
    "edge); figures in docs/failover.md",
    "make bench-failover-drill": "a benchmark (10 primary kills per mode); figures in "
    "docs/postgresql.md",
    "make bench-failover-drill BENCH_ARGS=…": "the same benchmark with other arguments",
    "make bench-autoscale": "a benchmark (3 minutes of stepped load through the lab's edge); "
    "figures in docs/performance.md",
    "make bench-backup": "a benchmark (a 1 GB database per repository); docs/postgresql.md",
    "make test-e2e-full": "CI runs the same suite without its slow tests (make test-e2e-suite)",
    "make lock": "re-resolves every pin against PyPI and rewrites requirements/; run by hand",
    "make audit AUDIT_ONLINE=…": "pip-audit asks PyPI's vulnerability service about every "
    "pinned package, which this machine may not; the CI workflow's audit job runs it "
    "(tests/unit/test_pipeline.py checks that make audit says it cannot run here)",
    "make load-test": "a minute of load on the API beside the lab on 2 cores: its p99 would "
    "measure the lab's load; the CI workflow's load job runs it (figures in docs/pipeline.md)",
    "make api-image RELEASE_OUTPUT=…": "the CI workflow's form; make test runs make api-image, "
    "and RELEASE_OUTPUT only appends the build's release, image and archive to a file",
    "make release-id RELEASE_OUTPUT=…": "reads the archive the CD workflow downloaded; "
    "tests/unit/test_pipeline.py runs its script on one, none and two archives",
    "playbooks/redis-restore.yml": "asks for yes at a terminal; tests/e2e/test_redis.py runs "
    "the documented form that answers it (-e redis_restore_confirm=yes)",
    "playbooks/redis-restore.yml -e redis_restore_key=…": "asks for yes at a terminal; "
    "tests/e2e/test_redis.py runs the same restore with -e redis_restore_confirm=yes",
    "playbooks/deploy.yml -e app_force=…": "a whole blue/green roll of the API (about 2.5 min "
    "on the lab, docs/rollout.md) only to rewrite its list of Sentinels after one joined or "
    "left; tests/e2e/test_redis_members.py adds back the Sentinel the list still names",
    "playbooks/rotate-secrets.yml --tags jwt -e app_jwt_keep_previous=…": "a second roll of "
    "the API (minutes on the lab) only to drop the previous JWT key; "
    "tests/e2e/test_secret_rotation.py runs the rotation that writes the key set",
}


def _make_recipe(target: str) -> str:
    text = (REPO / "Makefile").read_text()
    m = re.search(rf"^{re.escape(target)}:.*?\n((?:\t.*\n|[ ]+.*\n)+)", text, re.M)
    assert m, f"the Makefile has no recipe for {target}"
    return m.group(1)


def run_by_ci() -> set[Shape]:
    """What `.ci/run` runs itself: make test (its steps), make lab (its playbooks), make
    lab-down. Read from the Makefile and .ci/run, so a step taken out drops out here."""
    shapes = {Shape("make", "test"), Shape("make", "lab-down")}
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M) and "make lab-down" in ci, "CI's commands moved"
    test = _make_recipe("test")
    steps = set(re.findall(r"\bfor t in ([a-z -]+);", test))
    names = {n for group in steps for n in group.split()}
    names |= set(re.findall(r"\$\(call step,([a-z0-9-]+)[,)]", test))
    names |= set(re.findall(r"\$\(MAKE\) --no-print-directory ([a-z0-9-]+)", test))
    assert {"lab", "lint", "test-unit", "test-app", "test-roles"} <= names, names
    # make setup runs first in every target that needs it (their prerequisite).
    shapes |= {Shape("make", n) for n in names | {"setup"}}
    for line in _make_recipe("lab").splitlines():
        if line.strip().startswith("scripts/lab-converge.sh"):
            # Runs site.yml unless the same sources converged these hosts already: a clean
            # clone (CI) always runs it.
            converge = (REPO / "scripts" / "lab-converge.sh").read_text()
            line = re.findall(r"^ansible-playbook .*$", converge, re.M)[0].split(" | ")[0]
            # make test sets the options it adds (LAB_SITE_ARGS) for its lab.
            options = re.findall(r'export LAB_SITE_ARGS="([^"]*)"', test)
            assert options, "make test no longer sets LAB_SITE_ARGS for its lab"
            line = line.replace("${LAB_SITE_ARGS:-}", options[0])
        shape = parse(line.replace("$(LAB_INVENTORY)", "inventory/lab"))
        if shape:
            shapes.add(shape)
    assert Shape("playbook", "site.yml", ("--diff", "-v")) in shapes, (
        "make test's lab no longer runs site.yml --diff -v"
    )
    # make test-roles runs `make test-role ROLE=<role>` for each scenario.
    if "test-role ROLE=" in (REPO / "scripts" / "molecule-role.sh").read_text():
        shapes.add(Shape("make", "test-role", (), frozenset({"ROLE"})))
    return shapes


def _literal(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def run_by_tests() -> dict[Shape, str]:
    """Each run_documented(...) / run_make(...) call in tests/, with literal arguments."""
    found: dict[Shape, str] = {}
    for path in sorted((REPO / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            if node.func.id not in ("run_documented", "run_make") or not node.args:
                continue
            args = [_literal(a) for a in node.args]
            assert None not in args, f"{path}:{node.lineno}: give the command as literals"
            # timeout and inventory (-i, always the operator's own) are not the command's shape.
            names = frozenset(
                k.arg for k in node.keywords if k.arg and k.arg not in ("timeout", "inventory")
            )
            kind = "playbook" if node.func.id == "run_documented" else "make"
            flags = tuple(sorted(a for a in args[1:] if a))
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            found.setdefault(Shape(kind, str(args[0]), flags, names), where)
    return found


# Flags that only add output: a run with them is also the run without them.
OUTPUT_ONLY = {"--diff", "-v", "-vv", "-vvv"}


def _without_output_flags(shape: Shape) -> Shape:
    flags = tuple(f for f in shape.flags if f not in OUTPUT_ONLY)
    return Shape(shape.kind, shape.name, flags, shape.variables)


def test_every_documented_command_is_run_as_documented() -> None:
    docs = documented()
    assert len(docs) > 20, f"found only {len(docs)} documented commands: is the parser broken?"
    run = run_by_ci() | set(run_by_tests())
    covered = run | {_without_output_flags(s) for s in run}
    missing = [
        f"{shape}  (shown in {', '.join(where)})"
        for shape, where in sorted(docs.items(), key=lambda kv: str(kv[0]))
        if shape not in covered and str(shape) not in NOT_RUN
    ]
    assert not missing, "documented but run by no test and not in NOT_RUN:\n" + "\n".join(missing)
    for what, why in NOT_RUN.items():
        record(f"`{what}` as documented", why)


def test_not_run_lists_only_documented_commands() -> None:
    shown = {str(s) for s in documented()}
    stale = sorted(set(NOT_RUN) - shown)
    assert not stale, f"NOT_RUN names commands the docs no longer show: {stale}"


def test_tests_run_only_documented_forms() -> None:
    docs = documented()
    undocumented = [f"{s} at {w}" for s, w in run_by_tests().items() if s not in docs]
    assert not undocumented, "tests run forms the docs do not show:\n" + "\n".join(undocumented)


def test_make_help_lists_every_target_the_readme_names() -> None:
    result = run_make("help", timeout=120)
    assert result.returncode == 0, result.stderr
    listed = set(re.findall(r"^\s+([a-z][a-z0-9-]*)\s", result.stdout, re.M))
    readme = {
        s.name for s, where in documented().items() if s.kind == "make" and "README.md" in where
    }
    assert readme <= listed, f"make help does not list {sorted(readme - listed)}"


def test_make_test_role_without_a_role_says_how_to_call_it() -> None:
    result = run_make("test-role", timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "usage: make test-role ROLE=<name>" in result.stdout + result.stderr
