"""Wrong settings are refused by the app and pgbackrest roles' preflights, naming the variable.

Each case runs the role's real task file with ansible-playbook on the controller
(connection local, no host is converged) and reads the run with the JSON callback:
a refusal must be an `Assert` task of the role whose message names the variable to
fix. Each role also has a case with good settings that must pass, so a preflight
that refuses everything fails here too. These were the molecule scenarios' preflight
checks (roles/app and roles/pgbackrest); each run takes 2 to 8 s.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.local_playbook import run_playbook

REPO = Path(__file__).resolve().parents[2]


@dataclass
class TaskResult:
    name: str
    failed: bool
    skipped: bool
    messages: list[str]


@dataclass
class Run:
    returncode: int
    tasks: list[TaskResult]
    output: str

    def failures(self) -> list[TaskResult]:
        return [t for t in self.tasks if t.failed]

    def task(self, name: str) -> TaskResult:
        found = [t for t in self.tasks if t.name == name]
        assert found, f"task {name!r} did not run:\n{self.output}"
        return found[-1]


def _task_result(name: str, host: dict[str, object]) -> TaskResult:
    # A looped assert fails with "One or more items failed"; the failed item's
    # message is the one that names the variable.
    results = host.get("results")
    items = [r for r in results if isinstance(r, dict)] if isinstance(results, list) else []
    messages = [str(host["msg"])] if "msg" in host else []
    messages += [str(r["msg"]) for r in items if r.get("failed") and "msg" in r]
    return TaskResult(
        name=name,
        failed=bool(host.get("failed")),
        skipped=bool(host.get("skipped")),
        messages=messages,
    )


def run_role(
    tmp_path: Path,
    role: str,
    tasks_from: str,
    extra: dict[str, object],
    facts: bool = False,
    check: bool = False,
    loop: tuple[str, list[str]] | None = None,
) -> Run:
    """Include `role`'s `tasks_from` on localhost with `extra` as extra vars; with
    `loop` (variable, values), once per value, set as the include's variable."""
    include = [
        "    - ansible.builtin.include_role:",
        f"        name: {role}",
        f"        tasks_from: {tasks_from}",
    ]
    if loop is not None:
        variable, values = loop
        include += [
            f'      vars: {{{variable}: "{{{{ item }}}}"}}',
            f"      loop: {json.dumps(values)}",
        ]
    playbook = "\n".join(
        [
            "- hosts: localhost",
            "  connection: local",
            f"  gather_facts: {str(facts).lower()}",
            "  gather_subset: [min]",
            "  tasks:",
            *include,
            "",
        ]
    )
    result = run_playbook(
        tmp_path,
        playbook,
        extra,
        args=("--check",) if check else (),
        # The JSON callback alone: ansible.cfg's profile_tasks would print its
        # timings into the JSON on stdout.
        env={
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
            "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.json",
        },
    )
    output = result.stdout + result.stderr
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError as error:
        raise AssertionError(f"ansible-playbook printed no JSON report:\n{output}") from error
    tasks = [
        _task_result(str(task["task"]["name"]), host)
        for play in report["plays"]
        for task in play["tasks"]
        for host in task["hosts"].values()
    ]
    return Run(result.returncode, tasks, output)


def assert_refused(run: Run, role: str, names: list[str]) -> None:
    assert run.returncode != 0, f"the preflight accepted the setting:\n{run.output}"
    failed = run.failures()
    assert len(failed) == 1, f"expected one refusal, got {failed}:\n{run.output}"
    # A refusal by an assert, not a template error or a missing variable.
    assert failed[0].name.startswith(f"{role} : Assert"), failed[0]
    message = " ".join(failed[0].messages)
    for name in names:
        assert name in message, f"the refusal does not name {name}: {message}"


def assert_passed(run: Run) -> None:
    assert not run.failures(), f"refused good settings: {run.failures()}"
    assert run.returncode == 0, run.output


# --- pgbackrest: tasks_from preflight (asserts and the repositories' list) --------------

# Three repositories set as a real site would (no placeholder words: the preflight
# refuses those outside the lab, and this is not the lab).
PGBACKREST_BASE: dict[str, object] = {
    "postgresql_archive_command": "pgbackrest --stanza=zapora archive-push %p",
    "pgbackrest_s3_cipher_passphrase": "unit-s3-cipher-0123456789abcdef",
    "pgbackrest_s3_bucket": "zapora-pgbackrest",
    "pgbackrest_s3_endpoint": "s3.eu-central-1.amazonaws.com",
    "pgbackrest_s3_access_key": "AKIAUNITTEST0123",
    "pgbackrest_s3_secret_key": "unit-s3-key-0123456789",
    "pgbackrest_azure_cipher_passphrase": "unit-azure-cipher-0123456789abcdef",
    "pgbackrest_azure_container": "zapora-pgbackrest",
    "pgbackrest_azure_account": "zaporaunit",
    "pgbackrest_azure_key": "dW5pdC1henVyZS1rZXktMDEyMzQ1Njc4OWFiY2RlZg==",
    "pgbackrest_gcs_cipher_passphrase": "unit-gcs-cipher-0123456789abcdef",
    "pgbackrest_gcs_bucket": "zapora-pgbackrest",
    "pgbackrest_gcs_key_type": "token",
    "pgbackrest_gcs_key": "unit-gcs-token-0123",
}


def test_pgbackrest_good_settings_pass(tmp_path: Path) -> None:
    run = run_role(tmp_path, "pgbackrest", "preflight", PGBACKREST_BASE, facts=True)
    assert_passed(run)
    # The asserts the refusals below rely on ran, on all three repositories.
    for name in (
        "Assert each repository keeps its backups at least a day",
        "Assert each repository's secrets are set (and not placeholders outside the lab)",
        "Assert PostgreSQL archives its WAL through pgBackRest",
    ):
        assert not run.task(f"pgbackrest : {name}").skipped, name


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"pgbackrest_azure_retention_days": 0}, "pgbackrest_azure_retention_days"),
        ({"pgbackrest_gcs_cipher_passphrase": ""}, "pgbackrest_gcs_cipher_passphrase"),
        # What a site sets: the postgresql role's variable, read by the pgbackrest role.
        ({"postgresql_archive_command": ""}, "postgresql_archive_command"),
    ],
    ids=["retention-0", "gcs-passphrase-empty", "archive-command-empty"],
)
def test_pgbackrest_refuses_naming_the_variable(
    tmp_path: Path, change: dict[str, object], name: str
) -> None:
    run = run_role(tmp_path, "pgbackrest", "preflight", PGBACKREST_BASE | change, facts=True)
    assert_refused(run, "pgbackrest", [name])


# --- app: the deploy steps' own preflights ----------------------------------------------


def test_app_known_colours_pass(tmp_path: Path) -> None:
    run = run_role(
        tmp_path,
        "app",
        "preflight_colour",
        {},
        loop=("app_colour", ["blue", "green"]),
    )
    assert_passed(run)
    colour_checks = [t for t in run.tasks if t.name == "app : Assert app_colour is a known colour"]
    assert len(colour_checks) == 2 and not any(t.skipped for t in colour_checks), run.output


def test_app_unknown_colour_is_refused_before_anything_starts(tmp_path: Path) -> None:
    # Through deploy_start, as deploy.yml calls it: its first task is the preflight, so
    # nothing is written or started (nothing here could be: no Docker on localhost).
    run = run_role(
        tmp_path,
        "app",
        "deploy_start",
        {"app_colour": "purple", "app_release": "unit", "app_image": "zapora/api:unit"},
    )
    assert_refused(run, "app", ["app_colour must be one of blue, green", "purple"])


def image_settings(tmp_path: Path, archive: Path) -> dict[str, object]:
    return {
        "app_image": "zapora/api:unit",
        "app_image_archive": str(archive),
        # Check mode (below) writes nothing; this keeps even the paths inside tmp_path.
        "app_state_dir": str(tmp_path / "state"),
    }


def test_app_existing_image_archive_passes(tmp_path: Path) -> None:
    archive = tmp_path / "zapora-api-unit.tar"
    archive.write_bytes(b"")
    # Check mode: the archive's stat and the asserts run for real; the docker commands
    # after them do not (the controller's Docker is left alone).
    run = run_role(tmp_path, "app", "deploy_image", image_settings(tmp_path, archive), check=True)
    assert_passed(run)
    archive_check = run.task("app : Assert the image archive exists on the controller")
    assert not archive_check.skipped, run.output


def test_app_missing_image_archive_is_refused(tmp_path: Path) -> None:
    archive = Path("/nonexistent/zapora-api-not-built.tar")
    run = run_role(tmp_path, "app", "deploy_image", image_settings(tmp_path, archive), check=True)
    assert_refused(
        run, "app", ["app_image_archive", str(archive), "is not a file on the controller"]
    )


# --- app: the PostgreSQL proxy and Redis WAIT settings (tasks_from preflight) ----------

APP_SECRETS: dict[str, object] = {
    "app_jwt_secret": "unit-jwt-0123456789abcdef0123456789abcdef",
    "app_postgres_app_password": "Qm7xT2vK9pL4wR8nZ3cB",
    "app_postgres_owner_password": "Hs5dN8fJ2gY6tU1eW4qA",
    "app_redis_password": "Xk3vB7mP1zL9cR5tQ2wE",
    "app_postgres_hosts": ["10.0.0.31", "10.0.0.32"],
}


def test_app_proxy_and_wait_defaults_pass(tmp_path: Path) -> None:
    run = run_role(tmp_path, "app", "preflight", APP_SECRETS)
    assert_passed(run)
    check = run.task("app : Assert the PostgreSQL proxy and Redis WAIT settings are usable")
    assert not check.skipped, run.output


@pytest.mark.parametrize(
    ("setting", "names"),
    [
        (
            {"app_postgres_proxy_ports": {"primary": 5000, "replica": 5000}},
            ["app_postgres_proxy_ports"],
        ),
        ({"app_postgres_proxy_ports": {"primary": 5000}}, ["app_postgres_proxy_ports"]),
        ({"app_postgres_proxy_name": "not a name!"}, ["app_postgres_proxy_name", "not a name!"]),
        ({"app_postgres_proxy": "maybe"}, ["app_postgres_proxy must be true or false"]),
        ({"app_postgres_proxy_fall": 0}, ["app_postgres_proxy_fall"]),
        ({"app_redis_wait_replicas": "one"}, ["app_redis_wait_replicas", "one"]),
    ],
)
def test_app_proxy_and_wait_settings_refused_naming_the_variable(
    tmp_path: Path, setting: dict[str, object], names: list[str]
) -> None:
    run = run_role(tmp_path, "app", "preflight", {**APP_SECRETS, **setting})
    assert_refused(run, "app", names)


# --- app: replicas and the autoscaler (docs/operator-guide.md "Autoscaling") -------------


def test_app_replica_settings_pass(tmp_path: Path) -> None:
    run = run_role(
        tmp_path,
        "app",
        "preflight",
        {**APP_SECRETS, "app_replicas_max": 4, "app_autoscale": True},
    )
    assert_passed(run)


@pytest.mark.parametrize(
    ("setting", "names"),
    [
        ({"app_replicas_min": 3, "app_replicas_max": 2}, ["app_replicas_max", "app_replicas_min"]),
        # Step 10: blue's replica 2 metrics port (9320) is green's replica 1 metrics port.
        ({"app_replicas_max": 2, "app_replica_port_step": 10}, ["app_replica_port_step"]),
        ({"app_autoscale": True}, ["app_autoscale needs app_replicas_max > 1"]),
        (
            {"app_replicas_max": 3, "firewall_app_upstream_ports": [8001, 8002]},
            ["firewall_app_upstream_ports", "8101"],
        ),
        ({"app_replicas_max": 3, "nginx_app_replicas_max": 1}, ["nginx_app_replicas_max"]),
        (
            {"app_replicas_max": 2, "app_autoscale": True, "app_drain_seconds": 20},
            ["nginx_app_replica_keepalive_seconds (15)", "app_autoscale_drain_seconds (20"],
        ),
    ],
)
def test_app_replica_settings_refused_naming_the_variable(
    tmp_path: Path, setting: dict[str, object], names: list[str]
) -> None:
    run = run_role(tmp_path, "app", "preflight", {**APP_SECRETS, **setting})
    assert_refused(run, "app", names)


# --- app: how many api replicas a deploy starts (tasks_from deploy_replicas) ------------


@pytest.mark.parametrize(
    ("other", "settings", "expected"),
    [
        # The active colour runs 3 replicas (and its worker): the idle one starts 3.
        ("api\nworker\napi-2\napi-3\n", {"app_replicas_max": 4}, ["api", "api-2", "api-3"]),
        # Nothing runs (a first deploy, a host that joins): the minimum.
        ("", {"app_replicas_min": 2, "app_replicas_max": 4}, ["api", "api-2"]),
        # More than the maximum allows now (it was lowered): the maximum.
        ("api\napi-2\napi-3\n", {"app_replicas_max": 2}, ["api", "api-2"]),
    ],
)
def test_app_deploy_starts_the_active_colours_replica_count(
    tmp_path: Path, other: str, settings: dict[str, object], expected: list[str]
) -> None:
    # A stand-in for `docker ps`: the other colour's running services, one per line.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(f"#!/bin/sh\nprintf '%s' '{other}'\n")
    docker.chmod(0o755)
    playbook = """\
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: app
        tasks_from: deploy_replicas
    - ansible.builtin.debug:
        msg: "SERVICES={{ _app_start_services | to_json }}"
"""
    result = run_playbook(
        tmp_path,
        playbook,
        {"app_colour": "green", **settings},
        env={"PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert f"SERVICES={json.dumps([*expected, 'worker'])}" in result.stdout.replace('\\"', '"')
