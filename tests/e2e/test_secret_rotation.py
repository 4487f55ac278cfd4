"""Secrets rotate under load (docs/operator-guide.md, "Rotate secrets"): the lab's new values
are made the way the guide says for the lab (remove the secret's file under .lab/secrets/,
the next run generates a new one), then one run of rotate-secrets.yml rotates them all while
the order writer posts orders through the edge."""

from __future__ import annotations

import hashlib
import re
import time
import uuid

import pytest

from tests.e2e.conftest import SECRETS, Lab, api_client, lab_secret, run_documented
from tests.e2e.order_writer import OrderWriter

pytestmark = [pytest.mark.e2e, pytest.mark.lab(exclusive=("app", "data"))]

# The secrets rotate-secrets.yml rotates (.lab/secrets/<name>, the lab's Vault).
ROTATED = (
    "app_jwt_secret",
    "postgresql_zapora_app_password",
    "postgresql_zapora_owner_password",
    "redis_zapora_password",
)


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
    headers, refresh = _session()
    for name in ROTATED:
        (SECRETS / name).unlink()

    started = time.monotonic()
    with OrderWriter(limit_s=900) as writer:
        result = run_documented("rotate-secrets.yml", timeout=900)
    seconds = time.monotonic() - started
    timing = re.search(r"rotation seconds: ([^\"]*)", result.stdout)
    print(f"rotate-secrets.yml: {seconds:.0f} s; {timing.group(1) if timing else 'no timing'}")
    print(f"order writer: {writer.summary()}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert timing is not None, "the playbook printed no rotation seconds"

    after = {name: lab_secret(name) for name in ROTATED}
    assert all(after[name] != before[name] for name in ROTATED), "a secret kept its value"

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
