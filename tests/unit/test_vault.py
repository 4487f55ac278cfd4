"""Operator secrets: the example inventories' Vault files and the shared preflight
(roles/secrets) that every role imports.

Each run uses ansible-playbook on the controller with a real inventory (the example's, or a
copy of it) and the documented example password file; no host is reached (connection
local). A refusal must name the variable or the file; the good case must pass, so a
preflight that refuses everything fails here too. Each run takes 2 to 4 s.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.unit.local_playbook import run_playbook

REPO = Path(__file__).resolve().parents[2]
INVENTORIES = ["example", "single-host"]
PLACEHOLDER = yaml.safe_load((REPO / "roles/secrets/defaults/main.yml").read_text())[
    "secrets_placeholder_pattern"
]
CHECKED = ["postgresql_superuser_password", "redis_zapora_password", "app_jwt_secret"]
PLAYBOOK = f"""
- name: The shared secrets preflight, as every role imports it
  hosts: all
  gather_facts: false
  connection: local
  tasks:
    - name: Check the secrets
      ansible.builtin.import_role:
        name: secrets
      vars:
        secrets_check: {CHECKED}
"""
# Values a real operator might choose: long, random-looking, no placeholder word.
REAL = {f"vault_{name}": f"q7Jw2LpX9vRt4Nz8Kc3{i}Hd6Fm1Ys5Gb0" for i, name in enumerate(CHECKED)}


def _vault(*args: str) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "ansible-vault"
    return subprocess.run(
        [str(tool), *args], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )


def _run(
    tmp_path: Path, inventory: Path, extra: dict[str, object], password: Path | None = None
) -> str:
    password = password or inventory / "vault-password.example"
    result = run_playbook(
        tmp_path,
        PLAYBOOK,
        extra,
        inventory=str(inventory),
        args=("--vault-password-file", str(password), "--limit", "db-1.example.net"),
    )
    return f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_example_vault_decrypts_with_the_documented_password_and_holds_placeholders(
    inventory: str,
) -> None:
    # The documented command (docs/operator-guide.md, "Secrets"), word for word.
    guide = (REPO / "docs/operator-guide.md").read_text()
    path = f"inventory/{inventory}/group_vars/all/vault.yml"
    assert (REPO / path).read_text().startswith("$ANSIBLE_VAULT;1.1;AES256\n")
    command = (
        f"ansible-vault view --vault-password-file inventory/{inventory}/vault-password.example "
        f"{path}"
    )
    assert command.replace(inventory, "example") in guide.splitlines()
    view = _vault(*command.split()[1:])
    assert view.returncode == 0, view.stderr
    values = yaml.safe_load(view.stdout)
    assert values, "the example vault is empty"
    assert all(k.startswith("vault_") for k in values), sorted(values)
    real = [k for k, v in values.items() if not re.search(PLACEHOLDER, str(v))]
    assert not real, f"values that are not placeholders in {path}: {real}"
    # Every vault_ variable has its plain twin, and every twin points at the vault.
    plain = yaml.safe_load((REPO / f"inventory/{inventory}/group_vars/all/secrets.yml").read_text())
    assert {f"vault_{k}" for k in plain} == set(values)
    assert all(v == f"{{{{ vault_{k} }}}}" for k, v in plain.items())


def test_placeholder_is_refused_naming_the_variable(tmp_path: Path) -> None:
    out = _run(tmp_path, REPO / "inventory/example", {})
    assert "rc=2" in out, out
    for name in CHECKED:
        assert f"{name} must be set (in the inventory's Vault file as vault_{name})" in out, out


def test_short_secret_is_refused_naming_the_variable(tmp_path: Path) -> None:
    out = _run(tmp_path, REPO / "inventory/example", {**REAL, "vault_app_jwt_secret": "q7Jw2Lp"})
    assert "rc=2" in out, out
    assert "app_jwt_secret must be set" in out, out
    assert "redis_zapora_password must be set" not in out, out


def test_encrypted_example_with_real_values_is_accepted(tmp_path: Path) -> None:
    out = _run(tmp_path, REPO / "inventory/example", REAL)
    assert "rc=0" in out, out
    assert "Assert every Vault file of a production inventory is encrypted" in out, out


def test_unencrypted_vault_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory"
    shutil.copytree(REPO / "inventory/example", inventory)
    vault = inventory / "group_vars/all/vault.yml"
    clear = _vault(
        "decrypt", "--vault-password-file", str(inventory / "vault-password.example"), str(vault)
    )
    assert clear.returncode == 0, clear.stderr
    out = _run(tmp_path, inventory, REAL)
    assert "rc=2" in out, out
    assert f"{vault} not encrypted" in out, out


def test_lab_is_exempt_from_the_vault_file_rule_not_from_the_length(tmp_path: Path) -> None:
    # The lab's secrets are generated files under .lab/secrets, outside the repository: it
    # has no Vault file to encrypt, and its placeholders-free values are 24+ characters.
    inventory = tmp_path / "inventory"
    shutil.copytree(REPO / "inventory/example", inventory)
    vault = inventory / "group_vars/all/vault.yml"
    password = inventory / "vault-password.example"
    assert _vault("decrypt", "--vault-password-file", str(password), str(vault)).returncode == 0
    out = _run(tmp_path, inventory, {"zapora_environment": "lab"})
    assert "rc=0" in out, out
    short = _run(tmp_path, inventory, {"zapora_environment": "lab", "vault_app_jwt_secret": "x"})
    assert "rc=2" in short and "app_jwt_secret must be set" in short, short


def _documented_vault_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return [line for line in text.splitlines() if line.startswith("ansible-vault ")]


def test_documented_start_of_a_vault_makes_one_the_preflight_accepts(tmp_path: Path) -> None:
    # The README's commands, word for word, with inventory/prod a copy of the example under
    # tmp_path and ~ (where the operator's own password file lives) tmp_path itself.
    commands = _documented_vault_commands()
    assert [c.split()[1] for c in commands] == ["decrypt", "encrypt"], commands
    prod = tmp_path / "inventory/prod"
    shutil.copytree(REPO / "inventory/example", prod)
    own_password = tmp_path / ".zapora-prod-vault"
    own_password.write_text("q7Jw2LpX9vRt4Nz8Kc3Hd6Fm1Ys5Gb0\n")
    vault = prod / "group_vars/all/vault.yml"

    def run(command: str) -> None:
        words = command.replace("~/", f"{tmp_path}/").replace("inventory/prod", str(prod))
        result = _vault(*words.split()[1:])
        assert result.returncode == 0, f"{command}: {result.stderr}"

    run(commands[0])
    assert "CHANGE-ME" in vault.read_text()
    vault.write_text(yaml.safe_dump(REAL))
    (prod / "vault-password.example").unlink()
    run(commands[1])
    assert vault.read_text().startswith("$ANSIBLE_VAULT;")
    out = _run(tmp_path, prod, {}, password=own_password)
    assert "rc=0" in out, out


WIRED = {
    "common": set(),
    "postgresql": {"postgresql_superuser_password", "postgresql_replication_password"},
    "redis": {"redis_admin_password", "redis_zapora_password", "redis_backup_password"},
    "observability_stacks": {"observability_stacks_elastic_password"},
    "app": {"app_jwt_secret", "app_postgres_app_password", "app_redis_password"},
}


@pytest.mark.parametrize("role", sorted(WIRED))
def test_role_preflight_imports_the_shared_check_with_its_secrets(role: str) -> None:
    # The shared check is the one place the rules live: a role that drops the import, or a
    # secret from it, would go back to checking nothing (or its own rules) unnoticed.
    tasks = yaml.safe_load((REPO / f"roles/{role}/tasks/preflight.yml").read_text())
    imports = [
        t for t in tasks if t.get("ansible.builtin.import_role", {}).get("name") == "secrets"
    ]
    assert len(imports) == 1, f"{role}'s preflight imports roles/secrets {len(imports)} times"
    names = imports[0]["vars"]["secrets_check"]
    checked = set(names) if isinstance(names, list) else set(re.findall(r"'(\w+)'", names))
    assert WIRED[role] <= checked, f"{role} does not check {sorted(WIRED[role] - checked)}"
