"""The database tier across the lab: Patroni on db1 + db2, etcd on db1, db2, mon1.

Checked from outside as the API reaches it: from app1 over TLS with scram through
libpq multi-host strings. A frozen primary is tested once, as clients see it, in
test_failover.py (acknowledged orders kept, the old leader back as a streaming replica);
the killed primary in test_database_ha.py's drill.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable

import pytest

from tests.e2e.conftest import Lab, lab_secret

pytestmark = [pytest.mark.e2e, pytest.mark.lab(shared=("data",))]

PATRONICTL = "patronictl -c /etc/patroni/config.yml"
CA = "/etc/zapora-ca/ca.crt"  # on the CA host; copied to app1 by the fixture
# The API's two database roles: the schema owner (migrations) and the runtime role.
ROLES = ("zapora_app", "zapora_owner")


def members(lab: Lab) -> list[dict[str, object]]:
    out = lab.ssh(lab.groups["postgres"][0], f"{PATRONICTL} list -f json", timeout=30).stdout
    result: list[dict[str, object]] = json.loads(out)
    return result


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def client(lab: Lab) -> str:
    """app1 with psql, the CA certificate and a pgpass file (root-only) for zapora_app
    and zapora_owner."""
    app = lab.groups["app"][0]
    ca_host = lab.groups["etcd"][0]
    ca = lab.ssh(ca_host, f"cat {CA}").stdout
    passwords = {role: lab_secret(f"postgresql_{role}_password") for role in ROLES}
    lab.ssh(
        app, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-client", timeout=300
    )
    lab.ssh(
        app,
        "install -d -m 0755 /etc/zapora-e2e && printf %s "
        f"{shlex.quote(ca)} > /etc/zapora-e2e/ca.crt",
    )
    lines = " ".join(shlex.quote(f"*:5432:zapora:{r}:{p}") for r, p in passwords.items())
    lab.ssh(app, f"umask 077 && printf '%s\\n' {lines} > /root/.pgpass")
    return app


def dsn(lab: Lab, attrs: str, user: str = "zapora_app", extra: str = "") -> str:
    """The API's libpq multi-host string; `extra` settings come last and so override."""
    hosts = ",".join(lab.hosts[h].address for h in lab.groups["postgres"])
    return (
        f"host={hosts} port=5432 dbname=zapora user={user} sslmode=verify-full "
        f"sslrootcert=/etc/zapora-e2e/ca.crt connect_timeout=2 target_session_attrs={attrs} "
        f"{extra}"
    ).strip()


def psql(
    lab: Lab,
    app: str,
    attrs: str,
    sql: str,
    check: bool = True,
    user: str = "zapora_app",
    extra: str = "",
) -> subprocess.CompletedProcess[str]:
    conninfo = dsn(lab, attrs, user, extra)
    cmd = f"psql -X -At -v ON_ERROR_STOP=1 {shlex.quote(conninfo)} -c {shlex.quote(sql)}"
    return lab.ssh(app, cmd, check=check, timeout=30)


def test_one_leader_and_a_streaming_sync_standby(lab: Lab) -> None:
    state = members(lab)
    roles = sorted(str(m["Role"]) for m in state)
    assert roles == ["Leader", "Sync Standby"], state
    standby = next(m for m in state if m["Role"] == "Sync Standby")
    assert standby["State"] == "streaming", state


def test_row_written_on_the_primary_is_read_on_the_replica(lab: Lab, client: str) -> None:
    token = uuid.uuid4().hex
    # zapora_app cannot create tables: the probe table is the owner's, made once here
    # through the postgres superuser on the primary.
    leader = next(str(m["Member"]) for m in members(lab) if m["Role"] == "Leader")
    lab.ssh(
        leader,
        "sudo -u postgres psql -X -d zapora -v ON_ERROR_STOP=1 -c "
        + shlex.quote(
            "CREATE TABLE IF NOT EXISTS e2e_probe (id bigserial PRIMARY KEY, token text NOT NULL);"
            " ALTER TABLE e2e_probe OWNER TO zapora_owner;"
            " GRANT SELECT, INSERT ON e2e_probe TO zapora_app;"
            " GRANT USAGE ON SEQUENCE e2e_probe_id_seq TO zapora_app;"
        ),
    )
    psql(lab, client, "read-write", f"INSERT INTO e2e_probe (token) VALUES ('{token}')")
    seen = wait_for(
        lambda: (
            psql(
                lab,
                client,
                "prefer-standby",
                f"SELECT pg_is_in_recovery(), count(*) FROM e2e_probe WHERE token='{token}'",
            ).stdout.strip()
            == "t|1"
        ),
        30,
        "the row on the standby",
    )
    assert seen


def test_owner_creates_tables_over_the_network_and_the_app_role_cannot(
    lab: Lab, client: str
) -> None:
    # What a migration does: the owner logs in from the app host over TLS (verify-full,
    # scram) through the read-write multi-host string and creates a table; the app role
    # gets DML on it by default privileges and can create nothing itself.
    table = f"e2e_owner_{uuid.uuid4().hex[:8]}"
    try:
        made = psql(
            lab,
            client,
            "read-write",
            f"CREATE TABLE {table} (id int);"
            " SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            user="zapora_owner",
        )
        # psql prints each statement's result: the SELECT's is the last line.
        assert made.stdout.split()[-1] == "zapora_owner|t", made.stdout
        psql(lab, client, "read-write", f"INSERT INTO {table} VALUES (1)")
        refused = psql(lab, client, "read-write", f"CREATE TABLE {table}_app (id int)", check=False)
        assert refused.returncode != 0, "zapora_app created a table"
        assert "permission denied" in refused.stderr, refused.stderr
    finally:
        drop = f"DROP TABLE IF EXISTS {table}"
        psql(lab, client, "read-write", drop, check=False, user="zapora_owner")


def test_wrong_password_and_plaintext_logins_are_refused(lab: Lab, client: str) -> None:
    # The same string with the right password logs in: the refusals below are about
    # the password and TLS, not the route.
    assert psql(lab, client, "read-write", "SELECT 1").stdout.strip() == "1"
    wrong = psql(
        lab,
        client,
        "read-write",
        "SELECT 1",
        check=False,
        extra="password=wrong-password passfile=/dev/null",
    )
    assert wrong.returncode != 0, "a wrong password was accepted"
    assert "password authentication failed" in wrong.stderr, wrong.stderr
    # pg_hba.conf admits the API's roles from the network with hostssl lines only.
    plain = psql(lab, client, "read-write", "SELECT 1", check=False, extra="sslmode=disable")
    assert plain.returncode != 0, "a connection without TLS was accepted"
    assert "no pg_hba.conf entry" in plain.stderr, plain.stderr
