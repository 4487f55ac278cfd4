"""The app role on the lab's app hosts: secret files, the colours' Compose projects, ports.

On each app host: the secret files are the image user's only and hold the lab's secrets,
which appear nowhere in the containers' settings (`docker inspect`); the active colour
runs api and worker (and the autoscaler's replicas `api-2` ...); the other colour is
stopped but kept for a rollback, and its port is closed. From edge1 (the upstream's only
client): the active colour's port answers ready with PostgreSQL and Redis, and an
authenticated read goes through the migrated schema.

test_api_rollout.py runs before this file and leaves either colour active, so every test
reads the active colour from each host's state.json. A few SSH calls per host, no
change to the lab: the whole file takes about 10 s.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import (
    REPO,
    Lab,
    api_client,
    api_login,
    app_state,
    lab_group_vars,
    lab_secret,
)
from tests.e2e.test_baseline import port_state

pytestmark = pytest.mark.e2e

SECRETS_DIR = "/etc/zapora/secrets"
# Secret file on the app hosts -> the lab's secret it holds (.lab/secrets).
SECRET_FILES = {
    "jwt_secret": "app_jwt_secret",
    "redis_password": "redis_zapora_password",
    "pgpass_app": "postgresql_zapora_app_password",
    "pgpass_owner": "postgresql_zapora_owner_password",
    "admin_password": "app_admin_password",
}
# The *_FILE settings of the api and worker containers (compose/zapora.yml).
SECRET_PATHS = {
    "ZAPORA_JWT_SECRET_FILE": "/run/secrets/jwt_secret",
    "ZAPORA_REDIS_PASSWORD_FILE": "/run/secrets/redis_password",
}
ADMIN_EMAIL = "admin@zapora.example.com"


def role_defaults() -> dict[str, object]:
    data: dict[str, object] = yaml.safe_load(
        Path(REPO, "roles", "app", "defaults", "main.yml").read_text()
    )
    return data


def colour_port(colour: str) -> int:
    ports: dict[str, dict[str, int]] = role_defaults()["app_colour_ports"]  # type: ignore[assignment]
    return int(ports[colour]["api"])


def container_uid() -> int:
    return int(str(role_defaults()["app_container_uid"]))


def colours(lab: Lab, host: str) -> tuple[str, str, dict[str, object]]:
    """(active colour, the other colour, the other colour's recorded release) of `host`."""
    state = app_state(lab, host)
    active = str(state["active"])
    assert active in ("blue", "green"), f"{host}: no active colour in state.json: {state}"
    other = "green" if active == "blue" else "blue"
    recorded: dict[str, object] = state["colours"][other]  # type: ignore[index]
    return active, other, recorded


def project_containers(lab: Lab, host: str, colour: str, fmt: str) -> list[str]:
    """One line per container (running or not) of Compose project zapora-<colour>."""
    out = lab.ssh(
        host,
        f"docker ps -a --filter label=com.docker.compose.project=zapora-{colour} "
        f"--format {shlex.quote(fmt)}",
    ).stdout
    return sorted(line for line in out.splitlines() if line.strip())


def host_secrets(lab: Lab, host: str) -> dict[str, str]:
    """The secret files' contents on `host` (read as root)."""
    out = lab.ssh(
        host,
        "python3 -c "
        + shlex.quote(
            "import json, pathlib, sys; d = pathlib.Path(sys.argv[1]); "
            "print(json.dumps({p.name: p.read_text() for p in d.iterdir()}))"
        )
        + f" {SECRETS_DIR}",
    ).stdout
    files: dict[str, str] = json.loads(out)
    return files


def test_secret_files_are_the_image_users_and_hold_the_lab_secrets(lab: Lab) -> None:
    uid = container_uid()
    for host in lab.groups["app"]:
        listing = lab.ssh(host, f"stat -c '%n %a %u %U' {SECRETS_DIR} {SECRETS_DIR}/*").stdout
        stats = {line.split()[0]: line.split()[1:] for line in listing.splitlines()}
        # Enterable but not listable by anyone but root: a container's user reaches its
        # files by name only.
        assert stats.pop(SECRETS_DIR) == ["711", "0", "root"], (host, listing)
        names = {Path(p).name: s for p, s in stats.items()}
        assert set(SECRET_FILES) <= set(names), (host, listing)
        for name, (mode, owner, _) in names.items():
            assert (mode, owner) == ("400", str(uid)), f"{host}: {name} is {mode} uid {owner}"
        files = host_secrets(lab, host)
        for name, secret in SECRET_FILES.items():
            value = lab_secret(secret)
            # pgpass files are libpq passfile lines (*:port:db:user:password).
            expected = value if not name.startswith("pgpass") else f":{value}"
            assert files[name].strip().endswith(expected), f"{host}: {name} does not hold {secret}"


def test_active_colour_runs_api_and_worker_with_no_secret_in_their_settings(lab: Lab) -> None:
    for host in lab.groups["app"]:
        active, _, _ = colours(lab, host)
        fmt = '{{.Label "com.docker.compose.service"}} {{.Label "org.zapora.colour"}} {{.State}}'
        containers = project_containers(lab, host, active, fmt)
        # Replica slots 2 and up (`api-2` ...) are the autoscaler's: running or stopped,
        # as the load had them (tests/e2e/test_autoscale.py checks them).
        extra = [c for c in containers if re.fullmatch(rf"api-\d+ {active} \w+", c)]
        running = [c for c in containers if c not in extra]
        assert running == [f"api {active} running", f"worker {active} running"], (host, running)
        maximum = int(lab_group_vars("app").get("app_replicas_max", 1))
        assert all(2 <= int(c.split()[0][4:]) <= maximum for c in extra), (host, extra)
        inspect = lab.ssh(
            host,
            f"docker ps -q --filter label=com.docker.compose.project=zapora-{active} "
            "| xargs docker inspect",
        ).stdout
        # The values to look for: the lab's secrets and what the host's files hold (the
        # passfiles' password field), in case the two ever differ.
        secrets = {lab_secret(s) for s in SECRET_FILES.values()}
        for name, content in host_secrets(lab, host).items():
            content = content.strip()
            secrets.add(content.rsplit(":", 1)[-1] if name.startswith("pgpass") else content)
        secrets.discard("")
        # Five distinct values at least, or the search below would prove little.
        assert len(secrets) >= len(SECRET_FILES), f"{host}: empty or shared secrets"
        # The whole of `docker inspect` (Config.Env, Cmd, Labels, Mounts...), not only
        # the environment: a secret may be nowhere in a container's settings.
        leaked = [f"{s[:4]}..." for s in secrets if s in inspect]
        assert not leaked, f"{host}: secrets in docker inspect of zapora-{active}: {leaked}"
        for container in json.loads(inspect):
            env = dict(e.split("=", 1) for e in container["Config"]["Env"])
            # What the containers get instead: the secret files' paths.
            files = {k: env.get(k) for k in SECRET_PATHS}
            assert files == SECRET_PATHS, f"{host} {container['Name']}: {files}"
            assert "passfile=/run/secrets/pgpass_app" in env["ZAPORA_DATABASE_URL"], (
                f"{host} {container['Name']}: the database URL names no passfile"
            )


def test_the_stopped_colour_is_kept_and_its_port_closed(lab: Lab) -> None:
    for host in lab.groups["app"]:
        _, other, recorded = colours(lab, host)
        fmt = '{{.Label "com.docker.compose.service"}} {{.State}}'
        containers = project_containers(lab, host, other, fmt)
        # Replica slots 2 and up a deploy started for this colour: stopped with it, or
        # created and never started; none runs.
        extra = [c for c in containers if re.fullmatch(r"api-\d+ \w+", c)]
        assert all(c.split()[1] in ("exited", "created") for c in extra), (host, other, extra)
        kept = [c for c in containers if c not in extra]
        stopped = ["api exited", "worker exited"]
        # Nothing of the other colour runs. It has no containers only when it never
        # started on this host (a fresh `make lab`); a failed deploy's are stopped too.
        assert kept in ([], stopped), (host, other, kept)
        if recorded:
            # A release state.json records (test_api_rollout deploys both colours) is
            # stopped, not removed: rollback.yml starts it without a pull or a load.
            assert kept == stopped, (host, other, kept)
        # edge1 may reach both colours' ports (the firewall); nothing listens on this one.
        port = colour_port(other)
        assert port_state(lab, "edge1", host, port) == "refused", (host, port)


# Run on edge1: GET each path of the colour's port over HTTPS, verified against the
# internal CA as the edge holds it (argv: CA file, base URL, bearer token, paths), and
# print {path: [status, body]}.
EDGE_INTERNAL_CA = "/etc/nginx/zapora/internal-ca.crt"
FETCH = """\
import json, ssl, sys, urllib.error, urllib.request
ca, base, token, paths = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
context = ssl.create_default_context(cafile=ca)
out = {}
for path in paths:
    req = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            out[path] = [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        out[path] = [e.code, e.read().decode()]
print(json.dumps(out))
"""


def test_active_colour_serves_the_edge_from_the_migrated_schema(lab: Lab) -> None:
    with api_client() as c:
        auth = api_login(c, ADMIN_EMAIL, lab_secret("app_admin_password"))
    token = auth["Authorization"].removeprefix("Bearer ")
    for host in lab.groups["app"]:
        active, _, _ = colours(lab, host)
        base = f"https://{lab.hosts[host].address}:{colour_port(active)}"
        paths = ["/health/ready", "/users/me", "/menus?limit=1"]
        cmd = f"python3 -c {shlex.quote(FETCH)} {EDGE_INTERNAL_CA} {base} {shlex.quote(token)} "
        cmd += " ".join(shlex.quote(p) for p in paths)
        answers = json.loads(lab.ssh("edge1", cmd).stdout)
        status, body = answers["/health/ready"]
        assert status == 200, (host, body)
        checks = json.loads(body)["checks"]
        assert checks["database"] == "ok" and checks["redis"] == "ok", (host, checks)
        # Authenticated reads of the users and menus tables (a 401 would prove nothing).
        status, body = answers["/users/me"]
        assert status == 200 and json.loads(body)["email"] == ADMIN_EMAIL, (host, status, body)
        status, body = answers["/menus?limit=1"]
        assert status == 200 and isinstance(json.loads(body)["total"], int), (host, body)
