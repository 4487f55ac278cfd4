"""No secret reaches ansible-playbook's output, even under `--diff -v` (issue 20).

`no_log: true` censors a task's whole result, its diff included: a template or copy task
with no_log prints no file content under --diff (checked by the canary tests below on
ansible-core 2.19), so `diff: false` is not needed beside it. A loop prints each item
whole under -v even with a `loop_control.label`, so a loop over entries that hold keys
needs no_log or a loop over names only.

The static test reads every task of roles/*/tasks and playbooks/, whatever its module: a
task that is given a secret variable (in its arguments, its template's source, or the
messages an assert, debug or fail prints) carries `no_log: true`, unless EXCEPTIONS says
why it need not. Only includes and meta tasks print nothing of what they are given (the
tasks they include are read themselves); an assert's `that` prints as written, never
its values. The canary tests run the real tasks issue 20 names (Patroni's settings,
Redis's and Sentinel's configuration, alertmanager.yml, pgBackRest's repositories through
its preflight) on the controller with a known secret under --diff -v and search the output
for it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from ansible.playbook.task import Task

from tests.unit.local_playbook import run_playbook
from tests.unit.test_role_preflights import PGBACKREST_BASE

REPO = Path(__file__).resolve().parents[2]

# A variable is a secret when its name matches; paths to secrets (`*_file`, `*_dir`) and
# the public half of a key pair are not.
SECRET_NAME = re.compile(r"password|passphrase|secret|_key$|token|masterauth|basic_auth_users")
NOT_SECRET_SUFFIXES = ("_file", "_files", "_dir")
NOT_SECRET_PARTS = ("public_key",)
# Names that match but hold no secret, and why.
NOT_SECRET_NAMES = {
    "common_ssh_probe_private_key": "the deploying key's file path on the controller, not the key",
}
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
# Modules whose output can carry a value they were given (read by the canary tests).
MODULES = {"template", "copy", "set_fact", "command", "shell", "lineinfile", "blockinfile"}
# Task keywords, as ansible-core lists them: any other key of a task is its action.
KEYWORDS = set(Task.fattributes)
# Actions that print nothing of what they are given.
QUIET_ACTIONS = {"include_role", "import_role", "include_tasks", "import_tasks", "meta"}
# Actions that print only these arguments (an assert's `that` prints as written).
MESSAGE_ARGS = {
    "assert": ("fail_msg", "success_msg", "msg"),
    "debug": ("msg", "var"),
    "fail": ("msg",),
}
# (file, task name): why the task may print without no_log.
EXCEPTIONS = {
    ("roles/lab/tasks/up.yml", "Hosts | the lab key is authorised for root on every host"): (
        "lab_key is the generated key pair's result; the task writes its public half only"
    ),
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
    (
        "roles/pgbackrest/tasks/preflight.yml",
        "Assert each retired repository names a live one, an old path and its passphrase",
    ): "its message prints the retired entry's name and path and the live names, no passphrase",
    (
        "roles/pgbackrest/tasks/preflight.yml",
        "Assert a new passphrase comes with a new path, and the old path stays readable",
    ): "its message prints repository names and paths; the passphrases are only compared",
    ("roles/pgbackrest/tasks/restore_scratch.yml", "Assert the restore's inputs"): (
        "its message prints repository names and the retired entries' paths, never a passphrase"
    ),
    ("playbooks/redis-restore.yml", "Ask before data is replaced"): (
        "redis_restore_key is the snapshot's object name in the bucket, not a credential"
    ),
}
# Module options that Ansible masks itself (declared no_log by the module): a secret passed
# only there is censored in the result, and the task's error (Patroni's answer) still shows.
MASKED_OPTIONS = {"url_password"}
_META = {"name", "when", "no_log", "tags", "notify", "listen", "changed_when", "failed_when"}
LOOP_PROJECTIONS = (
    "community.general.remove_keys(",
    "map(attribute='name')",
    "map(attribute='config')",
    "range(",
)
# The same, in text dumped as YAML (its quotes may be doubled or escaped).
_PROJECTED = re.compile(
    r"\b(?:" + "|".join(SECRET_FACTS) + r")\s*\|\s*"
    r"(?=community\.general\.remove_keys\(|map\(attribute=\W*(?:name|config)\W*\))"
)
_EXPR = re.compile(r"{{(.*?)}}|{%(.*?)%}", re.S)
# A name inside a quoted path ('/app_admin_password') or after a dot is not a variable.
_IDENT = re.compile(r"(?<![\w.'\"/])([A-Za-z_]\w*)")


def _secrets_in(text: str) -> set[str]:
    # A list of entries holding secrets passed through a projection that leaves them out
    # (LOOP_PROJECTIONS) gives no secret.
    text = _PROJECTED.sub("", text)
    names = {n for a, b in _EXPR.findall(text) for n in _IDENT.findall(a + b)}
    return {
        n
        for n in names
        if n in SECRET_FACTS
        or (
            SECRET_NAME.search(n)
            and not n.endswith(NOT_SECRET_SUFFIXES)
            and not n.startswith(NOT_SECRET_PREFIX)
            and not any(part in n for part in NOT_SECRET_PARTS)
            and n not in NOT_SECRET_NAMES
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


def _action(task: dict[str, object]) -> tuple[str, object] | None:
    """The task's action (short name) and its arguments: its one key that is no keyword."""
    for key, args in task.items():
        if key not in KEYWORDS and not key.startswith("with_"):
            return key.rsplit(".", 1)[-1], args
    return None


def _messages(task: dict[str, object], action: str, args: dict[str, object]) -> str:
    """What an assert, debug or fail prints: its messages, with the task variables they use."""
    shown = {k: args[k] for k in MESSAGE_ARGS[action] if k in args}
    if "var" in shown:
        shown["var"] = "{{ " + str(shown["var"]) + " }}"
    text = str(yaml.safe_dump(shown))
    names = {n for a, b in _EXPR.findall(text) for n in _IDENT.findall(a + b)}
    task_vars = task.get("vars")
    if isinstance(task_vars, dict):
        text += str(yaml.safe_dump({k: v for k, v in task_vars.items() if k in names}))
    return text


def _text(path: Path, task: dict[str, object]) -> str:
    action = _action(task)
    if action and action[0] in MESSAGE_ARGS and isinstance(action[1], dict):
        return _messages(task, action[0], action[1])
    # A loop's items are checked by the loop test below.
    loops = {"loop", "loop_control"}
    body = {k: v for k, v in task.items() if k not in _META | loops and not k.startswith("with_")}
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


def _printed_secrets(path: Path, task: dict[str, object]) -> set[str]:
    """The secret variables a task is given, that its output under --diff -v may show."""
    action = _action(task)
    if action is None or action[0] in QUIET_ACTIONS:
        return set()
    return _secrets_in(_text(path, task))


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
            if task.get("no_log") is True or (rel, task.get("name")) in EXCEPTIONS:
                continue
            secrets = _printed_secrets(path, task)
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


def test_the_scan_reads_every_module_and_only_what_it_prints() -> None:
    # Any module given a secret is flagged, not only those that write files; an assert's
    # condition and an include's vars print nothing of the value.
    path = REPO / "roles/redis/tasks/server.yml"
    flagged: list[dict[str, object]] = [
        {"ansible.builtin.uri": {"url": "https://x/", "body": "{{ redis_zapora_password }}"}},
        {"ansible.builtin.debug": {"var": "postgresql_superuser_password"}},
        {"community.postgresql.postgresql_query": {"query": "{{ postgresql_superuser_password }}"}},
        {
            "ansible.builtin.assert": {"that": "true", "fail_msg": "got {{ shown }}"},
            "vars": {"shown": "{{ alertmanager_smtp_auth_password }}"},
        },
    ]
    silent: list[dict[str, object]] = [
        {
            "ansible.builtin.assert": {
                "that": "postgresql_superuser_password | length >= 16",
                "fail_msg": "postgresql_superuser_password must be 16 characters or more",
            }
        },
        {
            "ansible.builtin.include_role": {"name": "secrets"},
            "vars": {"secrets_value": "{{ redis_zapora_password }}"},
        },
        {"ansible.builtin.debug": {"msg": "{{ pgbackrest_repositories | map(attribute='name') }}"}},
    ]
    assert [bool(_printed_secrets(path, t)) for t in flagged] == [True] * len(flagged)
    assert [_printed_secrets(path, t) for t in silent] == [set()] * len(silent)


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
        "postgresql",
        "patroni.yml",
        "Write Patroni's settings",
        {
            "postgresql_address": "10.0.0.5",
            "postgresql_etcd_group": "all",
            "postgresql_etcd_client_port": 2379,
            "postgresql_etcd_leader_here": False,
            "postgresql_dcs_config": {"ttl": 20},
            "postgresql_parameters": {},
            "postgresql_hba": [],
            "postgresql_superuser_password": CANARY,
            "postgresql_replication_password": CANARY,
            "postgresql_patroni_restapi_password": CANARY,
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
