"""The internal CA's copy beside the inventory (internal_ca_backup_dir): the role run on
the controller as its own CA host writes ca.crt and the key in Ansible Vault's format,
a CA host that lost its CA gets the very same key and certificate back, and a third run
changes nothing. (The apt install of python3-cryptography is skipped: the venv has it.)"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

from tests.unit.local_playbook import run_playbook

PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: internal_ca
"""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_ca_host_that_lost_its_ca_gets_the_same_one_back(tmp_path: Path) -> None:
    ca, backup = tmp_path / "ca", tmp_path / "backup"
    extra: dict[str, object] = {
        "internal_ca_host": "localhost",
        "internal_ca_dir": str(ca),
        "internal_ca_backup_dir": str(backup),
        "internal_ca_backup_passphrase": "a-test-passphrase-of-32-chars-xx",
        "zapora_environment": "lab",
        "ansible_python_interpreter": sys.executable,
    }
    args = ("--skip-tags", "install")

    first = run_playbook(tmp_path, PLAYBOOK, extra, args=args)
    assert first.returncode == 0, first.stdout[-3000:]
    key, crt = digest(ca / "ca.key"), digest(ca / "ca.crt")
    assert (backup / "ca.key.vault").read_text().startswith("$ANSIBLE_VAULT;")
    assert "PRIVATE KEY" not in (backup / "ca.key.vault").read_text()
    assert digest(backup / "ca.crt") == crt

    shutil.rmtree(ca)
    second = run_playbook(tmp_path, PLAYBOOK, extra, args=args)
    assert second.returncode == 0, second.stdout[-3000:]
    assert (digest(ca / "ca.key"), digest(ca / "ca.crt")) == (key, crt), "a new CA was made"

    third = run_playbook(tmp_path, PLAYBOOK, extra, args=args)
    assert third.returncode == 0, third.stdout[-3000:]
    assert "changed=0" in third.stdout, third.stdout[-2000:]
