"""Secrets rotate under load (docs/operator-guide.md, "Rotate secrets"): the lab's new values
are made the way the guide says for the lab (remove the secret's file under .lab/secrets/,
the next run generates a new one; for pgBackRest's passphrases the next key generation in
.lab/pgbackrest_generation), then one run of rotate-secrets.yml rotates them all while the
order writer posts orders through the edge. Afterwards a backup taken before the
repositories' keys changed is restored (restore.yml from the old path)."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import SECRETS, Lab, api_client, edge_tls, lab_secret, run_documented
from tests.e2e.order_writer import OrderWriter
from tests.e2e.test_backup import AS_PG, pgbackrest_info, primary_and_replica, psql

pytestmark = [pytest.mark.e2e, pytest.mark.lab(exclusive=("app", "data"))]

# The secrets rotate-secrets.yml rotates (.lab/secrets/<name>, the lab's Vault).
ROTATED = (
    "app_jwt_secret",
    "postgresql_zapora_app_password",
    "postgresql_zapora_owner_password",
    "redis_zapora_password",
    "postgresql_patroni_restapi_password",
    "postgresql_replication_password",
    "nginx-admin",
)
# pgBackRest's key generation (inventory/lab/group_vars/all/pgbackrest.yml): generation N
# keeps pgbackrest_<repo>_cipher_passphrase[.gN] and the path /pgbackrest[-gN].
GENERATION = SECRETS.parent / "pgbackrest_generation"
REPOS = ("s3", "azure", "gcs")


def _generation_key(repo: str, generation: int) -> str:
    return f"pgbackrest_{repo}_cipher_passphrase" + ("" if generation == 1 else f".g{generation}")


def _generation_path(generation: int) -> str:
    return "/pgbackrest" + ("" if generation == 1 else f"-g{generation}")


# Run on the member itself: Patroni's REST port admits the database, app and monitoring
# hosts, not the controller. The password reaches the request on its standard input.
PATRONI_REQUEST = (
    "import base64, json, ssl, sys, urllib.error, urllib.request as u; "
    "a = json.load(sys.stdin); r = u.Request(a['url'], method=a['method']); "
    "a['password'] and r.add_header('Authorization', 'Basic ' + "
    "base64.b64encode(('patroni:' + a['password']).encode()).decode())\n"
    "try:\n s = u.urlopen(r, context=ssl.create_default_context(cafile=a['ca']), timeout=10)\n"
    "except urllib.error.HTTPError as e:\n s = e\n"
    "print(json.dumps({'status': s.status if hasattr(s, 'status') else s.code, "
    "'body': s.read().decode()}))"
)


class PatroniAnswer:
    def __init__(self, status_code: int, body: str) -> None:
        self.status_code, self.text = status_code, body

    def json(self) -> Any:
        return json.loads(self.text)


def _patroni(lab: Lab, host: str, path: str, password: str | None = None) -> PatroniAnswer:
    """GET (or, with a password, an authenticated POST) on a member's REST API over HTTPS,
    asked on that member."""
    request = {
        "url": f"https://{lab.hosts[host].address}:8008{path}",
        "method": "POST" if password else "GET",
        "password": password or "",
        "ca": "/etc/postgresql/pki/ca.crt",
    }
    out = lab.ssh(
        host, f"python3 -c {shlex.quote(PATRONI_REQUEST)}", stdin=json.dumps(request), timeout=30
    )
    answer = json.loads(out.stdout)
    return PatroniAnswer(int(answer["status"]), str(answer["body"]))


def _leader(lab: Lab) -> tuple[str, int]:
    """The Patroni leader's name and the cluster's timeline."""
    members = _patroni(lab, lab.groups["postgres"][0], "/cluster").json()["members"]
    leader = [m for m in members if m["role"] == "leader"]
    assert len(leader) == 1, members
    return leader[0]["name"], int(leader[0]["timeline"])


def _admin_ui(password: str) -> int:
    """The status of an admin UI behind the edge's basic auth (the lab's user admin)."""
    with httpx.Client(verify=edge_tls(), timeout=10) as c:
        return c.get("https://127.0.0.1:8443/prometheus/", auth=("admin", password)).status_code


def _session() -> tuple[dict[str, str], str]:
    """A customer's access header and refresh token, issued before the rotation."""
    email = f"e2e-rotation-{uuid.uuid4().hex[:8]}@zapora.example.com"
    with api_client() as c:
        r = c.post(
            "/auth/register",
            json={"email": email, "password": "e2e rotation password", "full_name": "R"},
        )
        assert r.status_code == 201, r.text
        r = c.post("/auth/login", json={"email": email, "password": "e2e rotation password"})
        assert r.status_code == 200, r.text
        tokens = r.json()
    return {"Authorization": f"Bearer {tokens['access_token']}"}, tokens["refresh_token"]


def test_rotate_every_secret_under_load(lab: Lab) -> None:
    before = {name: lab_secret(name) for name in ROTATED}
    old_gen = int(GENERATION.read_text()) if GENERATION.exists() else 1
    old_keys = {repo: lab_secret(_generation_key(repo, old_gen)) for repo in REPOS}
    leader_before = _leader(lab)
    headers, refresh = _session()
    for name in ROTATED:
        (SECRETS / name).unlink()
    GENERATION.write_text(f"{old_gen + 1}\n")

    started, started_wall = time.monotonic(), time.time()
    with OrderWriter(limit_s=900) as writer:
        result = run_documented("rotate-secrets.yml", "--diff", "-v", timeout=900)
    seconds = time.monotonic() - started
    timing = re.search(r"rotation seconds: ([^\"]*)", result.stdout)
    print(f"rotate-secrets.yml: {seconds:.0f} s; {timing.group(1) if timing else 'no timing'}")
    print(f"order writer: {writer.summary()}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert timing is not None, "the playbook printed no rotation seconds"

    after = {name: lab_secret(name) for name in ROTATED}
    assert all(after[name] != before[name] for name in ROTATED), "a secret kept its value"
    new_keys = {repo: lab_secret(_generation_key(repo, old_gen + 1)) for repo in REPOS}
    assert all(new_keys[repo] != old_keys[repo] for repo in REPOS), "a passphrase kept its value"

    # Under --diff -v every changed template and every registered result is printed: no
    # secret, old or new, is in it (reported by name only).
    output = result.stdout + result.stderr
    assert "as config file" in output, "the run was not verbose (-v names its config file)"
    searched = {f"{n} (old)": v for n, v in before.items()}
    searched |= {f"{n} (new)": v for n, v in after.items()}
    searched |= {f"{r} passphrase (old)": v for r, v in old_keys.items()}
    searched |= {f"{r} passphrase (new)": v for r, v in new_keys.items()}
    searched |= {p.name: p.read_text().strip() for p in SECRETS.iterdir() if p.is_file()}
    leaked = sorted(
        name for name, value in searched.items() if len(value) >= 16 and value in output
    )
    print(f"--diff -v output: {len(output) / 1e3:.0f} kB searched for {len(searched)} values")
    assert not leaked, f"secrets printed by rotate-secrets.yml --diff -v: {leaked}"

    # Under load through the edge: nothing failed, nothing acknowledged was lost.
    assert writer.served > 10, writer.summary()
    assert writer.failed == 0, "\n".join(writer.failures[:20])
    assert writer.missing(lab) == []

    # The session from before: its access token still works, its refresh token refreshes,
    # and the new access token is signed with the new key.
    with api_client() as c:
        assert c.get("/users/me", headers=headers).status_code == 200
        r = c.post("/auth/refresh", json={"refresh_token": refresh})
        assert r.status_code == 200, r.text
        fresh = {"Authorization": f"Bearer {r.json()['access_token']}"}
        assert c.get("/users/me", headers=fresh).status_code == 200

    # Every app host holds the key set: the new key signs, the previous one verifies.
    for host in lab.groups["app"]:
        keys = lab.ssh(host, "cat /etc/zapora/secrets/jwt_secret").stdout.split()
        assert keys == [after["app_jwt_secret"], before["app_jwt_secret"]], host

    # Redis: the API's user holds exactly one password again, the new one, on every data
    # node (the old one was removed once no client used it).
    wanted = hashlib.sha256(after["redis_zapora_password"].encode()).hexdigest()
    for host in lab.groups["redis"]:
        out = lab.ssh(host, "zapora-redis-cli --json ACL GETUSER zapora").stdout
        hashes = re.findall(r"[0-9a-f]{64}", out)
        assert hashes == [wanted], (host, len(hashes))

    # Patroni: every member's REST API takes the new password only; no failover, no new
    # timeline; every replica streams again (its passfile logged in: the playbook checks).
    assert _leader(lab) == leader_before, "the rotation moved the leader"
    rest = "postgresql_patroni_restapi_password"
    for host in lab.groups["postgres"]:
        assert _patroni(lab, host, "/reload", after[rest]).status_code == 202, host
        assert _patroni(lab, host, "/reload", before[rest]).status_code == 401, host
    primary, _ = primary_and_replica(lab)
    streaming = psql(
        lab, primary, "SELECT count(*) FROM pg_stat_replication WHERE state='streaming'"
    )
    assert int(streaming) == len(lab.groups["postgres"]) - 1, streaming

    # The edge: the admin UIs take the new basic-auth password, no longer the old one.
    assert _admin_ui(after["nginx-admin"]) != 401
    assert _admin_ui(before["nginx-admin"]) == 401

    _assert_old_backups_restore(lab, old_gen, started_wall)


def _assert_old_backups_restore(lab: Lab, old_gen: int, since: float) -> None:
    """Each repository's live path holds a full backup of this run (new key); a backup from
    before the change restores from the old path with the old key (restore.yml)."""
    primary, replica = primary_and_replica(lab)
    fulls = [
        b["database"]["repo-key"]
        for b in pgbackrest_info(lab, primary)[0]["backup"]
        if b["type"] == "full" and b["timestamp"]["start"] >= since
    ]
    assert sorted(fulls) == [1, 2, 3], f"full backups on the new paths: {fulls}"

    old_path = _generation_path(old_gen)
    retired = f"/etc/pgbackrest/retired/s3{old_path.replace('/', '-')}.conf"
    info = f"{AS_PG}pgbackrest --config={retired} --stanza=zapora --output=json info"
    out = lab.ssh(primary, info)
    old = [b for b in json.loads(out.stdout)[0]["backup"] if b["database"]["repo-key"] == 1]
    # A backup from before the change (the hourly differential's timer may add one to the
    # old path while the rotation runs: old key, old path, still correct).
    assert old and any(b["timestamp"]["stop"] < since for b in old), old

    scratch, port = "/var/lib/postgresql/restore", 5433
    started = time.monotonic()
    restore = run_documented(
        "restore.yml",
        restore_host=replica,
        restore_repo="s3",
        restore_type="immediate",
        restore_repo_path=old_path,
    )
    try:
        assert restore.returncode == 0, restore.stdout[-3000:]
        said = " ".join(restore.stdout.split())
        assert f"Restored from s3 {old_path}" in said, restore.stdout[-2000:]
        query = f"{AS_PG}psql -X -At -p {port} -d zapora -c 'SELECT count(*) FROM users'"
        users = int(lab.ssh(replica, query).stdout)
        assert users >= 1, "the restored copy has no user (the lab's admin is one)"
        print(
            f"restore from {old_path} (backup before the key change): "
            f"{time.monotonic() - started:.0f} s, {users} users"
        )
    finally:
        lab.ssh(
            replica,
            f"{AS_PG}/usr/lib/postgresql/17/bin/pg_ctl -D {scratch} -m fast stop; rm -rf {scratch}",
            check=False,
        )
