"""House rules every role keeps (shared/STYLE.md), checked on the files themselves."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = sorted(p for p in (REPO / "roles").iterdir() if (p / "tasks").is_dir())


def _yaml(path: Path) -> object:
    return yaml.safe_load(path.read_text()) if path.exists() else None


def test_there_are_roles() -> None:
    assert ROLES, "no roles found under roles/"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_argument_specs_document_exactly_the_defaults(role: Path) -> None:
    defaults = _yaml(role / "defaults" / "main.yml") or {}
    specs = _yaml(role / "meta" / "argument_specs.yml")
    assert isinstance(specs, dict), f"{role.name}: meta/argument_specs.yml is missing"
    options = specs["argument_specs"]["main"].get("options") or {}
    assert isinstance(defaults, dict)
    assert set(options) == set(defaults), (
        f"{role.name}: options only in argument_specs: {sorted(set(options) - set(defaults))}; "
        f"defaults without a spec: {sorted(set(defaults) - set(options))}"
    )
    for name, spec in options.items():
        assert spec.get("description"), f"{role.name}: option {name} has no description"
        assert spec.get("type"), f"{role.name}: option {name} has no type"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_variables_carry_the_role_prefix(role: Path) -> None:
    defaults = _yaml(role / "defaults" / "main.yml") or {}
    assert isinstance(defaults, dict)
    prefix = role.name + "_"
    stray = [k for k in defaults if not k.startswith(prefix)]
    assert not stray, f"{role.name}: defaults without the {prefix} prefix: {stray}"


def test_templates_start_with_ansible_managed() -> None:
    templates = sorted((REPO / "roles").glob("*/templates/**/*.j2"))
    missing = [
        str(t.relative_to(REPO))
        for t in templates
        if "ansible_managed" not in (t.read_text().lstrip().splitlines() or [""])[0]
    ]
    assert not missing, f"templates whose first line lacks ansible_managed: {missing}"
