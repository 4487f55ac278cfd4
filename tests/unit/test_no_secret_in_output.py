"""No secret reaches ansible-playbook's output, even under `--diff -v` (issue 20).

`no_log: true` censors a task's whole result, its diff included: a template or copy task
with no_log prints no file content under --diff (checked by the canary tests below on
ansible-core 2.19), so `diff: false` is not needed beside it. A loop prints each item
whole under -v even with a `loop_control.label`, so a loop over entries that hold keys
needs no_log or a loop over names only.

The static test reads every task of roles/*/tasks and playbooks/: a task that writes,
registers or sets a value from a secret variable carries `no_log: true`, unless
EXCEPTIONS says why it need not. The canary tests run real task files of two roles on
the controller with a known secret and search the output for it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.unit.local_playbook import run_playbook
from tests.unit.test_role_preflights import PGBACKREST_BASE

REPO = Path(__file__).resolve().parents[2]

# A variable is a secret when its name matches; paths to secrets (`*_file`, `*_dir`) are not.
SECRET_NAME = re.compile(r"password|passphrase|secret|_key$|token|masterauth|basic_auth_users")
NOT_SECRET_SUFFIXES = ("_file", "_files", "_dir")
# The secrets role's variables hold the names of secrets and the rules they meet
# (secrets_check, secrets_min_length), never a value.
NOT_SECRET_PREFIX = "secrets_"
# Lists whose entries hold secrets: pgbackrest_repositories (each store's keys, as a fact
# of pgbackrest/tasks/repositories.yml), pgbackrest_retired_repositories and its fact
# pgbackrest_retired (old passphrases), nginx_admin_users (basic-auth passwords).
SECRET_FACTS = {
    "pgbackrest_repositories",
    "pgbackrest_retired_repositories",
    "pgbackrest_retired",
    "nginx_admin_users",
}
# Modules whose output can carry a value they were given.
MODULES = {"template", "copy", "set_fact", "command", "shell", "lineinfile", "blockinfile"}
# (file, task name): why the task may print without no_log.
EXCEPTIONS = {
    ("roles/common/tasks/preflight.yml", "Read the public half of the deploying key"): (
        "common_ssh_probe_private_key is the key file's path; the task prints the public half"
    ),
    (
        "roles/common/tasks/ssh.yml",
        "Log in to the probe sshd from the controller with the deploying key",
    ): "common_ssh_probe_private_key is the key file's path, not the key",
    ("roles/etcd/tasks/configure.yml", "Write the member's settings"): (
        "etcd_cluster_token names the cluster so that members of another cluster cannot "
        "join by mistake; it grants nothing (etcd authenticates peers by certificate)"
    ),
    ("roles/pgbackrest/tasks/config_files.yml", "Write the backup script's settings"): (
        "takes only each repository's name and index from pgbackrest_repositories"
    ),
    (
        "roles/pgbackrest/tasks/restore_scratch.yml",
        "Restore from the repository {{ pgbackrest_restore_repo }}",
    ): "takes only the repository's index; the restore's error must reach the operator",
    (
        "roles/pgbackrest/tasks/first_backup.yml",
        "Take the first full backup in each repository that holds none (primary only)",
    ): "loops over the repositories' names only; a failed backup's error must show",
    (
        "roles/redis/tasks/restore.yml",
        "Put the snapshot on the primary and build its AOF from it",
    ): ("redis_restore_key is the snapshot's object name in the bucket, not a credential"),
    (
        "playbooks/failover-drill.yml",
        "Install the writer, the CA certificate and the password file",
    ): (
        "no_log per item: true for the pgpass item, the only one holding the password "
        "(checked: a per-item no_log keeps that item's content out of --diff -v)"
    ),
    (
        "roles/alertmanager/tasks/configure.yml",
        "Render alertmanager.yml with the SMTP password masked",
    ): ("writes the rendered text with the SMTP password replaced by 'masked' (the rescue)"),
    ("roles/nginx/tasks/admin_users.yml", "Remove basic-auth users no longer listed"): (
        "takes only the users' names from nginx_admin_users"
    ),
    ("playbooks/redis-restore.yml", "Ask before data is replaced"): (
        "redis_restore_key is the snapshot's object name in the bucket, not a credential"
    ),
}
# Module options that Ansible masks itself (declared no_log by the module): a secret passed
# only there is censored in the result, and the task's error (Patroni's answer) still shows.
MASKED_OPTIONS = {"url_password"}
_META = {"name", "when", "no_log", "tags", "notify", "listen", "changed_when", "failed_when"}
_EXPR = re.compile(r"{{(.*?)}}|{%(.*?)%}", re.S)
_IDENT = re.compile(r"(?<![\w.'\"])([A-Za-z_]\w*)")


def _secrets_in(text: str) -> set[str]:
    names = {n for a, b in _EXPR.findall(text) for n in _IDENT.findall(a + b)}
    return {
        n
        for n in names
        if n in SECRET_FACTS
        or (
            SECRET_NAME.search(n)
            and not n.endswith(NOT_SECRET_SUFFIXES)
            and not n.startswith(NOT_SECRET_PREFIX)
        )
    }


def _leaves(tasks: object) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for task in tasks if isinstance(tasks, list) else []:
        if not isinstance(task, dict):
            continue
        if "block" in task:
            for part in ("block", "rescue", "always"):
                out += _leaves(task.get(part))
        else:
            out.append(task)
    return out


def _tasks(path: Path) -> list[dict[str, object]]:
    data = yaml.safe_load(path.read_text())
    out: list[dict[str, object]] = []
    for item in data if isinstance(data, list) else []:
        if isinstance(item, dict) and "hosts" in item:
            for section in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                out += _leaves(item.get(section))
        else:
            out += _leaves([item])
    return out


def _module(task: dict[str, object]) -> tuple[str, object] | None:
    for key, args in task.items():
        if key.rsplit(".", 1)[-1] in MODULES:
            return key.rsplit(".", 1)[-1], args
    return None


def _text(path: Path, task: dict[str, object]) -> str:
    body = {k: v for k, v in task.items() if k not in _META}
    for key, args in list(body.items()):
        if isinstance(args, dict):
            body[key] = {k: v for k, v in args.items() if k not in MASKED_OPTIONS}
    text = str(yaml.safe_dump(body))
    module = _module(task)
    if module and module[0] == "template" and isinstance(module[1], dict):
        # A template's secrets are in its source, not in the task.
        # A src built from a loop item stands for every template it can name.
        pattern = re.sub(r"{{.*?}}", "*", str(module[1]["src"]))
        sources = [
            src
            for folder in (
                path.parent.parent / "templates",
                path.parent,
                REPO / "playbooks" / "templates",
            )
            for src in sorted(folder.glob(pattern))
        ]
        assert sources, f"{path}: template {pattern} not found"
        text += "".join(src.read_text() for src in sources)
    return text


def unsilenced_secret_tasks() -> list[str]:
    files = [
        *sorted(REPO.glob("roles/*/tasks/*.yml")),
        *sorted(REPO.glob("roles/*/handlers/*.yml")),
        *sorted(REPO.glob("playbooks/*.yml")),
        *sorted(REPO.glob("playbooks/tasks/*.yml")),
    ]
    found = []
    for path in files:
        rel = str(path.relative_to(REPO))
        for task in _tasks(path):
            if _module(task) is None and "register" not in task:
                continue
            if task.get("no_log") is True or (rel, task.get("name")) in EXCEPTIONS:
                continue
            secrets = _secrets_in(_text(path, task))
            if secrets:
                found.append(f"{rel}: {task.get('name')!r} uses {sorted(secrets)}")
    return found


def test_every_task_that_handles_a_secret_has_no_log() -> None:
    found = unsilenced_secret_tasks()
    assert not found, "tasks that print secrets under --diff -v (add no_log: true):\n" + (
        "\n".join(found)
    )


# A loop prints each item whole under -v, label or not: a loop over a secret (or over
# entries holding one) must be silent, per task or per item, or pass its list through a
# projection that leaves the secrets out (names, config paths, or indexes into the list).
LOOP_PROJECTIONS = (
    "community.general.remove_keys(",
    "map(attribute='name')",
    "map(attribute='config')",
    "range(",
)


def loops_over_secrets() -> list[str]:
    found = []
    for path in [
        *sorted(REPO.glob("roles/*/tasks/*.yml")),
        *sorted(REPO.glob("roles/*/handlers/*.yml")),
        *sorted(REPO.glob("playbooks/*.yml")),
        *sorted(REPO.glob("playbooks/tasks/*.yml")),
    ]:
        for task in _tasks(path):
            loops = [str(v) for k, v in task.items() if k == "loop" or k.startswith("with_")]
            no_log = task.get("no_log")
            if not loops or no_log is True or (isinstance(no_log, str) and "item" in no_log):
                continue
            secrets = _secrets_in("".join(f"{{{{ {v} }}}}" for v in loops))
            if secrets and not any(p in v for p in LOOP_PROJECTIONS for v in loops):
                found.append(
                    f"{path.relative_to(REPO)}: {task.get('name')!r} loops over {sorted(secrets)}"
                )
    return found


def test_no_loop_prints_a_secret_as_its_item() -> None:
    found = loops_over_secrets()
    assert not found, "loops whose items hold secrets (no_log, or loop over names):\n" + (
        "\n".join(found)
    )


def test_the_scan_finds_a_template_secret_and_every_exception_still_exists() -> None:
    # The scan must see a secret inside a template's source (patroni.yml.j2), else the
    # test above passes on nothing; and an exception for a task gone is a stale excuse.
    task: dict[str, object] = {"ansible.builtin.template": {"src": "patroni.yml.j2", "dest": "/x"}}
    path = REPO / "roles/postgresql/tasks/patroni.yml"
    assert "postgresql_superuser_password" in _secrets_in(_text(path, task))
    names = {
        (str(p.relative_to(REPO)), t.get("name"))
        for p in [*REPO.glob("roles/*/tasks/*.yml"), *REPO.glob("playbooks/*.yml")]
        for t in _tasks(p)
    }
    assert not set(EXCEPTIONS) - names, f"stale exceptions: {set(EXCEPTIONS) - names}"


CANARY = "Canary-7f3e9c-never-printed"


def _role_task(role: str, tasks_file: str, name: str, dest: Path) -> dict[str, object]:
    """The role's task `name` as written (no_log included), its template read from the
    role and written to `dest` instead of the host's path: the owner, group, handler,
    condition and validate step only matter on a converged host."""
    path = REPO / "roles" / role / "tasks" / tasks_file
    task = next(t for t in _tasks(path) if t.get("name") == name)
    module = _module(task)
    assert module is not None and isinstance(module[1], dict)
    key = next(k for k in task if k.rsplit(".", 1)[-1] == module[0])
    args = {k: v for k, v in module[1].items() if k not in ("owner", "group", "validate")}
    args["dest"] = str(dest)
    if "src" in args:
        args["src"] = str(REPO / "roles" / role / "templates" / str(args["src"]))
    return {
        **{k: v for k, v in task.items() if k not in ("notify", "when", "register")},
        key: args,
    }


def _defaults(role: str) -> dict[str, object]:
    data = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())
    assert isinstance(data, dict)
    return data


# (role, task file, task name, the role's variables set for the case: the canary is the
# secret the template writes).
RENDER_CASES = [
    (
        "alertmanager",
        "configure.yml",
        "Write alertmanager.yml (checked by amtool)",
        {
            "alertmanager_email_enabled": True,
            "alertmanager_email_to": ["ops@example.org"],
            "alertmanager_email_from": "alerts@example.org",
            "alertmanager_smtp_smarthost": "smtp.example.org:587",
            "alertmanager_smtp_auth_username": "alerts",
            "alertmanager_smtp_auth_password": CANARY,
        },
    ),
    (
        "redis",
        "sentinel.yml",
        "Initial Sentinel configuration",
        {
            "redis_announce_address": "10.0.0.5",
            "redis_primary_address": "10.0.0.4",
            "redis_sentinel_password": CANARY,
            "redis_zapora_password": CANARY,
        },
    ),
    (
        "redis",
        "server.yml",
        "Redis configuration",
        {
            "redis_announce_address": "10.0.0.5",
            "redis_primary_address": "10.0.0.4",
            "redis_replication_password": CANARY,
        },
    ),
]


@pytest.mark.parametrize(
    ("role", "tasks_file", "name", "extra"), RENDER_CASES, ids=lambda c: str(c)[:20]
)
def test_a_rendered_secret_stays_out_of_diff_and_verbose_output(
    tmp_path: Path, role: str, tasks_file: str, name: str, extra: dict[str, object]
) -> None:
    dest = tmp_path / "rendered"
    task = _role_task(role, tasks_file, name, dest)
    playbook = yaml.safe_dump(
        [{"hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": [task]}]
    )
    run = run_playbook(tmp_path, playbook, {**_defaults(role), **extra}, args=("--diff", "-v"))
    output = run.stdout + run.stderr
    # The task ran and wrote the secret: else "not in the output" proves nothing.
    assert run.returncode == 0, output
    assert CANARY in dest.read_text(), output
    assert CANARY not in output, f"{role}/{tasks_file}: {name!r} printed the secret"


def test_the_repositories_keys_stay_out_of_the_preflights_verbose_output(tmp_path: Path) -> None:
    # The real preflight, as the role runs it: it builds pgbackrest_repositories (each
    # store's keys, as a fact) and loops its asserts over the repositories.
    playbook = (
        "- hosts: localhost\n  connection: local\n  gather_facts: true\n  tasks:\n"
        "    - ansible.builtin.include_role:\n        name: pgbackrest\n"
        "        tasks_from: preflight.yml\n"
        "    - ansible.builtin.assert:\n"
        "        that: pgbackrest_repositories[0].options['s3-key-secret'] == canary\n"
        "        quiet: true\n"
    )
    secrets = [k for k in PGBACKREST_BASE if SECRET_NAME.search(k)]
    assert len(secrets) == 7, secrets  # 3 ciphers, the S3 pair, the Azure and GCS keys
    extra = {**PGBACKREST_BASE, **dict.fromkeys(secrets, CANARY), "canary": CANARY}
    run = run_playbook(tmp_path, playbook, extra, args=("--diff", "-v"))
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "Assert each repository's secrets are set" in output, output
    assert CANARY not in output, "the pgbackrest preflight printed a store's keys"


def test_a_refused_alertmanager_config_shows_amtool_without_the_password(tmp_path: Path) -> None:
    # no_log hides amtool's complaint about the written file; the rescue shows what amtool
    # says about the same settings with the password masked. The role's block as written,
    # in a copy of the role (its templates linked) whose first template writes to
    # tmp_path instead of /etc/prometheus.
    path = REPO / "roles/alertmanager/tasks/configure.yml"
    data = yaml.safe_load(path.read_text())
    block = next(t for t in data if t.get("name") == "Write alertmanager.yml (checked by amtool)")
    write = block["block"][0]["ansible.builtin.template"]
    write["dest"] = str(tmp_path / "alertmanager.yml")
    del write["owner"], write["group"], block["block"][0]["notify"]
    role = tmp_path / "roles" / "alertmanager_block"
    (role / "tasks").mkdir(parents=True)
    (role / "tasks" / "main.yml").write_text(yaml.safe_dump([block]))
    (role / "templates").symlink_to(path.parent.parent / "templates")
    playbook = (
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.include_role:\n        name: alertmanager_block\n"
    )
    extra = {
        **_defaults("alertmanager"),
        **RENDER_CASES[0][3],
        "alertmanager_smtp_smarthost": "smtp.example.org",  # no port: amtool refuses it
    }
    roles_path = f"{tmp_path / 'roles'}:{REPO / 'roles'}"
    run = run_playbook(
        tmp_path, playbook, extra, args=("--diff", "-v"), env={"ANSIBLE_ROLES_PATH": roles_path}
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert "amtool check-config on the same settings" in output, output
    assert "smtp.example.org" in output and "port" in output, output
    assert CANARY not in output, "the rescue printed the SMTP password"
    assert not (tmp_path / "alertmanager.yml").exists(), "a refused config was written"
