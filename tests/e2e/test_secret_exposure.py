"""No generated secret's value where anyone but root and its service reads it: every value
under .lab/secrets/ is searched for in each lab host's process list, the environment of
every process, the journal, `docker inspect` of every container on the Docker hosts, and the
repository's tracked files. The values never leave this process: the hosts' text comes back
over SSH and is searched here, and a hit is reported by the secret's name only."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.e2e.conftest import REPO, SECRETS, Lab

pytestmark = [pytest.mark.e2e]

# What each host shows anyone who can list processes, read logs or ask Docker. Inside
# containers /proc/*/environ is read from the host (the containers are processes of it).
SOURCES = {
    "ps": "ps -eo args=",
    # Each process's environment after a line naming its program.
    "environ": (
        'for d in /proc/[0-9]*; do echo "@@ $(cat $d/comm 2>/dev/null)"; '
        "tr '\\0' '\\n' < $d/environ 2>/dev/null; echo; done"
    ),
    "journal": "journalctl --no-pager -o cat -q",
}
DOCKER = "docker ps -aq | xargs -r docker inspect"


def _secrets() -> dict[str, str]:
    values = {
        path.name: path.read_text().strip() for path in sorted(SECRETS.iterdir()) if path.is_file()
    }
    assert values, f"no secrets under {SECRETS}: run `make lab`"
    # Short values would match by chance; the lab's are 24-48 characters.
    short = [name for name, value in values.items() if len(value) < 16]
    assert not short, f"secrets too short to search for: {short}"
    return values


def _hits(text: str, values: dict[str, str]) -> list[str]:
    return [name for name, value in values.items() if value in text]


def test_no_secret_in_process_lists_environments_logs_or_docker_inspect(lab: Lab) -> None:
    values = _secrets()
    found: list[str] = []
    searched = 0
    for host in sorted(lab.hosts):
        sources = dict(SOURCES)
        if lab.ssh(host, "command -v docker", check=False).returncode == 0:
            sources["docker inspect"] = DOCKER
        for source, command in sources.items():
            out = lab.ssh(host, command, check=False, timeout=180)
            # A Docker host may run no container yet (mon1 without image archives); an app
            # host runs the deployed colour, so its inspect must not come back empty.
            idle_docker_host = source == "docker inspect" and host not in lab.groups["app"]
            assert out.stdout or idle_docker_host, (
                f"{host}: {source} returned nothing ({out.stderr[:200]})"
            )
            searched += len(out.stdout)
            blocks = out.stdout.split("@@ ") if source == "environ" else [out.stdout]
            for block in blocks:
                program = block.split("\n", 1)[0].strip() if source == "environ" else ""
                for name in _hits(block, values):
                    found.append(f"{host} {source} {program}".rstrip() + f": {name}")
    print(f"searched {searched / 1e6:.1f} MB on {len(lab.hosts)} hosts for {len(values)} secrets")
    assert not found, "secret values found:\n" + "\n".join(found)


def test_no_secret_in_the_repository(lab: Lab) -> None:
    values = _secrets()
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    found = []
    for name in filter(None, tracked):
        path = REPO / name.decode()
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        found += [f"{name.decode()}: {secret}" for secret in _hits(text, values)]
    print(f"searched {len(tracked)} tracked files for {len(values)} secrets")
    assert not found, "secret values in tracked files:\n" + "\n".join(found)


def _key_lines() -> dict[str, str]:
    """A line from the body of each private key the controller holds for the lab (the edge's
    CA; the internal CA's key is kept encrypted): a key printed whole would show it."""
    lines = {}
    for path in sorted(SECRETS.rglob("*.key")):
        body = [line for line in path.read_text().splitlines() if not line.startswith("-----")]
        if body and not path.read_text().startswith("-----BEGIN ENCRYPTED"):
            lines[str(path.relative_to(SECRETS))] = max(body, key=len)
    return lines


SITE_LOG = REPO / ".lab" / "site.log"


def test_no_secret_in_the_output_of_site_yml_with_diff_and_verbose(lab: Lab) -> None:
    """`make lab LAB_SITE_ARGS="--diff -v"` (as `make test` runs it) keeps the converge's
    whole output in .lab/site.log: no generated secret and no private key is in it. The
    first converge of a new lab is the run where every task that renders a secret changes,
    so `--diff` shows each of them; `-v` prints what every task returned."""
    from tests.not_run import record

    assert SITE_LOG.exists() or not os.environ.get("ZAPORA_SITE_LOG_REQUIRED"), (
        f"{SITE_LOG} is missing: make lab did not run site.yml on these hosts"
    )
    header = SITE_LOG.read_text().split("\n", 1)[0] if SITE_LOG.exists() else ""
    flags = header.split()
    if not ("--diff" in flags and "-v" in flags):
        why = (
            f"{SITE_LOG} is from a run without --diff -v ({header or 'no log'}); "
            '`make lab LAB_CONVERGE=1 LAB_SITE_ARGS="--diff -v"` makes one'
        )
        # make test converges its lab with --diff -v: there the search must run.
        assert not os.environ.get("ZAPORA_SITE_LOG_REQUIRED"), why
        record("e2e the secret search of site.yml --diff -v output", why)
        pytest.skip(why)
    text = SITE_LOG.read_text(errors="replace")
    # A log of a run that stopped early proves little: it must reach the recap.
    assert "PLAY RECAP" in text, f"{SITE_LOG} has no PLAY RECAP: site.yml did not finish"
    assert text.count("--- before") > 0, "the log shows no diff: was --diff honoured?"
    values = _secrets() | _key_lines()
    found = _hits(text, values)
    print(
        f"searched {len(text) / 1e6:.1f} MB of `{header.lstrip('# ')}` for {len(values)} "
        f"secrets and keys, {text.count('--- before')} diffs"
    )
    assert not found, f"secret values in the output of site.yml --diff -v: {found}"
