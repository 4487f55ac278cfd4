"""The app role's primary discovery (docs/failover.md): with two PostgreSQL hosts the
colour's DSNs point at the host's HAProxy by app_postgres_proxy_name (writes on the primary
port, reads on the replica port then the primary port), HAProxy checks Patroni's
/primary and /replica on every PostgreSQL host and closes sessions to a server it marks
down; with one host (or app_postgres_proxy false) the DSN names the hosts directly.
Renders the role's own templates with ansible-playbook on the controller (about 3 s each).
"""

from __future__ import annotations

from pathlib import Path

from tests.unit.local_playbook import run_playbook

REPO = Path(__file__).resolve().parents[2]

PLAYBOOK = """
- hosts: app1
  connection: local
  gather_facts: false
  vars:
    app_colour: blue
    app_release: unit
    app_image: zapora/api:unit
  tasks:
    - ansible.builtin.include_vars: {file: "%(repo)s/roles/app/defaults/main.yml"}
    - ansible.builtin.include_vars: {file: "%(repo)s/roles/app/vars/main.yml"}
    - ansible.builtin.template:
        src: "%(repo)s/roles/app/templates/colour.env.j2"
        dest: "%(out)s/colour.env"
        mode: '0600'
    - ansible.builtin.template:
        src: "%(repo)s/roles/app/templates/haproxy.cfg.j2"
        dest: "%(out)s/haproxy.cfg"
        mode: '0600'
"""


def render(
    tmp_path: Path, postgres: list[str], extra: dict[str, object], redis: tuple[str, ...] = ("db1",)
) -> dict[str, str]:
    out = tmp_path / "out"
    out.mkdir(parents=True)
    lines = ["[app]", "app1 ansible_host=10.0.0.21", "[postgres]"]
    lines += [f"{h} ansible_host=10.0.0.{31 + i}" for i, h in enumerate(postgres)]
    lines += ["[redis]", *redis]
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("\n".join(lines) + "\n")
    result = run_playbook(
        tmp_path,
        PLAYBOOK % {"repo": REPO, "out": out},
        extra,
        inventory=str(inventory),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    env = dict(
        line.split("=", 1)
        for line in (out / "colour.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    env["haproxy.cfg"] = (out / "haproxy.cfg").read_text()
    return env


def test_two_postgres_hosts_go_through_haproxy_checked_by_patroni(tmp_path: Path) -> None:
    env = render(tmp_path, ["db1", "db2"], {})
    name = "postgresql.zapora.internal"
    assert env["ZAPORA_DATABASE_URL"].startswith(f"postgresql://zapora_app@{name}:5000/zapora?")
    assert "target_session_attrs=read-write" in env["ZAPORA_DATABASE_URL"]
    # TLS stays end to end through the pass-through, verified by the proxy's name.
    for url in ("ZAPORA_DATABASE_URL", "ZAPORA_REPLICA_DATABASE_URL", "ZAPORA_OWNER_DATABASE_URL"):
        assert "sslmode=verify-full&sslrootcert=/run/secrets/internal_ca" in env[url], url
    assert env["ZAPORA_REPLICA_DATABASE_URL"].startswith(
        f"postgresql://zapora_app@{name}:5001,{name}:5000/zapora?"
    )
    assert env["ZAPORA_OWNER_DATABASE_URL"].startswith(f"postgresql://zapora_owner@{name}:5000/")
    assert env["ZAPORA_POSTGRES_PROXY_NAME"] == name
    cfg = env["haproxy.cfg"]
    for role, port in (("primary", 5000), ("replica", 5001)):
        section = cfg.split(f"listen postgres_{role}\n", 1)[1].split("\nlisten ", 1)[0]
        assert f"bind :{port}" in section
        assert f"http-check send meth OPTIONS uri /{role}" in section
        for host, addr in (("db1", "10.0.0.31"), ("db2", "10.0.0.32")):
            # Patroni's REST API is HTTPS: the checks verify it by the internal CA and name.
            assert (
                f"server {host} {addr}:5432 check port 8008 check-ssl verify required"
                f" ca-file /etc/haproxy/internal-ca.crt verifyhost {host}"
            ) in section
    assert "on-marked-down shutdown-sessions" in cfg
    # A refused connection is retried on a server chosen afresh (docs/failover.md).
    assert "retries 3" in cfg and "option redispatch 1" in cfg
    assert "mode tcp" in cfg


def test_one_postgres_host_or_the_proxy_off_connects_directly(tmp_path: Path) -> None:
    single = render(tmp_path / "single", ["db1"], {})
    assert single["ZAPORA_DATABASE_URL"].startswith("postgresql://zapora_app@10.0.0.31:5432/")
    off = render(tmp_path / "off", ["db1", "db2"], {"app_postgres_proxy": False})
    assert off["ZAPORA_DATABASE_URL"].startswith(
        "postgresql://zapora_app@10.0.0.31:5432,10.0.0.32:5432/"
    )
    assert "prefer-standby" in off["ZAPORA_REPLICA_DATABASE_URL"]


def test_redis_wait_replicas_follows_the_data_nodes(tmp_path: Path) -> None:
    one = render(tmp_path / "one", ["db1", "db2"], {})
    assert one["ZAPORA_REDIS_WAIT_REPLICAS"] == "0"
    two = render(tmp_path / "two", ["db1", "db2"], {}, redis=("db1", "db2"))
    assert two["ZAPORA_REDIS_WAIT_REPLICAS"] == "1"
    assert two["ZAPORA_REDIS_WAIT_TIMEOUT_MS"] == "500"
