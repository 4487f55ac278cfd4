"""The commands the docs tell operators to run, read from README.md and docs/*.md.

A test that runs a playbook or a make target "as documented" takes its command from here,
so a playbook that needs an `-e` the docs do not show fails in CI as it would for everyone
else (rollback.yml did: the e2e test passed `app_drain_seconds=3` and hid an undefined
variable). Values are the operator's to choose (`-e restore_host=db2`, `ROLE=name`); what
must match the docs is the *shape* of the command: the playbook or target, the flags, and
which extra variables are set. Options the docs show in brackets are optional:
`restore-drill.yml [-e drill_repo=azure]` documents both the bare command and the one
with `drill_repo`.

tests/unit/test_documented_commands.py checks that every documented shape is run by CI
(`make lab`, `.ci/run`) or by a test through `run_documented`/`run_make`, or is listed
there with the reason it is not.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)


@dataclass(frozen=True)
class Shape:
    """A command without its values: `playbooks/<name>` or `make <target>`, flags, variables."""

    kind: str  # "playbook" or "make"
    name: str  # "rollback.yml" or "lab"
    flags: tuple[str, ...] = ()
    variables: frozenset[str] = frozenset()

    def __str__(self) -> str:
        head = f"playbooks/{self.name}" if self.kind == "playbook" else f"make {self.name}"
        setting = "-e {}=…" if self.kind == "playbook" else "{}=…"
        rest = [*self.flags, *(setting.format(v) for v in sorted(self.variables))]
        return " ".join([head, *rest])


def _command_lines(text: str) -> list[str]:
    """Every inline code span and every line of a fenced block (comments cut off)."""
    lines = list(_CODE_SPAN.findall(_FENCE.sub("", text)))
    for block in _FENCE.findall(text):
        lines += block.splitlines()[1:-1]
    return [re.sub(r"\s+#\s.*$", "", line).strip() for line in lines]


_OPTIONAL = re.compile(r"\s\[(-[^\[\]]*)\]")


def _variants(line: str) -> list[str]:
    """Expand optional option groups, `[-e k=v]`, into the commands with and without them."""
    out = [line]
    while True:
        expanded = []
        for cmd in out:
            m = _OPTIONAL.search(cmd)
            if not m:
                expanded.append(cmd)
                continue
            expanded += [
                cmd[: m.start()] + cmd[m.end() :],
                cmd[: m.start()] + " " + m.group(1) + cmd[m.end() :],
            ]
        if expanded == out:
            return out
        out = expanded


def _variables(value: str) -> set[str]:
    """The names an `-e` sets: `k=v`, `k='a b'`, a JSON object, or several `k=v` at once."""
    value = value.strip()
    if value.startswith("{"):
        return set(json.loads(value))
    return {part.split("=", 1)[0] for part in shlex.split(value)}


def parse(command: str) -> Shape | None:
    """The shape of one `ansible-playbook ...` or `make ...` command, or None."""
    try:
        raw = shlex.split(command)
    except ValueError:
        return None
    if "ansible-playbook" in raw:
        raw = raw[raw.index("ansible-playbook") + 1 :]
        kind = "playbook"
    elif raw[:1] == ["make"] and len(raw) > 1 and re.fullmatch(r"[a-z][a-z0-9-]*", raw[1]):
        raw = raw[1:]
        kind = "make"
    else:
        return None
    name, flags, variables = "", [], set()
    i = 0
    while i < len(raw):
        tok = raw[i]
        if tok == "-i":
            i += 2
            continue
        if tok in ("-e", "--extra-vars"):
            variables |= _variables(raw[i + 1])
            i += 2
            continue
        if kind == "playbook" and tok.startswith("playbooks/") and tok.endswith(".yml"):
            name = tok.removeprefix("playbooks/")
        elif kind == "make" and not name:
            name = tok
        elif kind == "make" and "=" in tok:
            variables.add(tok.split("=", 1)[0])
        elif tok in ("--tags", "--limit", "-l", "-t"):
            flags.append(f"{tok} {raw[i + 1]}")
            i += 1
        elif tok.startswith("-"):
            flags.append(tok)
        i += 1
    if not name:
        return None
    return Shape(kind, name, tuple(sorted(flags)), frozenset(variables))


def documented() -> dict[Shape, list[str]]:
    """Every documented command shape, with where the docs show it (file:line)."""
    found: dict[Shape, list[str]] = {}
    for doc in DOCS:
        text = doc.read_text()
        for line in _command_lines(text):
            # A command: `ansible-playbook ...`, `make ...`, or a playbook with its options
            # (`playbooks/x.yml -e ...`); a bare `playbooks/x.yml` in prose is a reference.
            bare_with_options = re.match(r"playbooks/\S+\.yml\s+\[?-", line)
            if not ("ansible-playbook" in line or line.startswith("make ") or bare_with_options):
                continue
            if bare_with_options:
                line = f"ansible-playbook {line}"
            for variant in _variants(line):
                shape = parse(variant)
                if shape is None:
                    continue
                where = f"{doc.relative_to(REPO)}"
                found.setdefault(shape, [])
                if where not in found[shape]:
                    found[shape].append(where)
    return found


def require_documented(shape: Shape) -> None:
    """Fail naming the docs' commands when a test runs a command the docs do not show."""
    docs = documented()
    if shape in docs:
        return
    same = sorted(str(s) for s in docs if s.kind == shape.kind and s.name == shape.name)
    raise AssertionError(
        f"`{shape}` is not a command the docs show; documented forms of {shape.name}: "
        f"{same or 'none'}. Run it as the docs show it, or document the option."
    )


def run_make(target: str, timeout: int = 600, **variables: str) -> subprocess.CompletedProcess[str]:
    """Run `make <target> [VAR=value ...]` in the repository as the README shows it."""
    require_documented(Shape("make", target, (), frozenset(variables)))
    return subprocess.run(
        ["make", "--no-print-directory", target, *(f"{k}={v}" for k, v in variables.items())],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
