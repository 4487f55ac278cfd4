"""No generated secret's value where anyone but root and its service reads it: every value
under .lab/secrets/ is searched for in each lab host's process list, the environment of
every process, the journal, `docker inspect` of every container on the Docker hosts, and the
repository's tracked files. The values never leave this process: the hosts' text comes back
over SSH and is searched here, and a hit is reported by the secret's name only."""

from __future__ import annotations

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
