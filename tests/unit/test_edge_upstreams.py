"""The edge's upstreams list every API replica of the active colour on every app host,
and retries never re-send a POST (docs/scaling.md). Rendered from the nginx role's
templates without a converge; the running edge is tests/e2e/test_autoscale.py's part."""

from __future__ import annotations

from typing import Any

from tests.unit.test_edge_headers import defaults, render

HOSTS = {"app1": {"ansible_host": "10.0.0.21"}, "app2": {"ansible_host": "10.0.0.22"}}


def upstreams(**overrides: Any) -> dict[str, list[str]]:
    d = defaults()
    settings = {
        "nginx_app_group": "app",
        "groups": {"app": ["app1", "app2"]},
        "hostvars": HOSTS,
        "nginx_colour_ports": d["nginx_colour_ports"],
        # What the role's default gives for app_replicas_max 3.
        "nginx_colour_extra_ports": {"blue": [8011, 8012], "green": [8021, 8022]},
        "nginx_app_hosts_leaving": [],
        "nginx_upstream_max_fails": 3,
        "nginx_upstream_fail_timeout": "10s",
        "nginx_upstream_keepalive": 32,
    } | overrides
    out: dict[str, list[str]] = {}
    current = ""
    for line in render("upstreams.conf.j2", settings):
        if line.startswith("upstream "):
            current = line.split()[1]
            out[current] = []
        elif line.startswith("server "):
            out[current].append(line.split()[1])
    return out


def test_every_replica_of_every_host_is_a_server() -> None:
    assert upstreams() == {
        "zapora_blue": ["10.0.0.21:8001", "10.0.0.21:8011", "10.0.0.21:8012",
                        "10.0.0.22:8001", "10.0.0.22:8011", "10.0.0.22:8012"],
        "zapora_green": ["10.0.0.21:8002", "10.0.0.21:8021", "10.0.0.21:8022",
                         "10.0.0.22:8002", "10.0.0.22:8021", "10.0.0.22:8022"],
    }  # fmt: skip


def test_a_leaving_host_is_left_out() -> None:
    servers = upstreams(nginx_app_hosts_leaving=["app2"])
    assert all(s.startswith("10.0.0.21:") for s in servers["zapora_blue"] + servers["zapora_green"])


def test_the_role_default_follows_app_replicas_max() -> None:
    # The default is a template on app_replicas_max: 4 (the app role's default) gives 3 extras.
    d = defaults()
    assert "app_replicas_max | default(4)" in d["nginx_colour_extra_ports"]["blue"]
    assert "range(8011," in d["nginx_colour_extra_ports"]["blue"]
    assert "range(8021," in d["nginx_colour_extra_ports"]["green"]


def test_retries_skip_stopped_replicas_but_never_resend_a_post() -> None:
    d = defaults()
    lines = render("proxy.conf.j2", d | {"nginx_upstream_next_tries": 0})
    (next_upstream,) = [x for x in lines if x.startswith("proxy_next_upstream ")]
    conditions = next_upstream.rstrip(";").split()[1:]
    # "error" covers a refused connection (a replica starting, draining or stopped).
    assert "error" in conditions
    assert "non_idempotent" not in conditions
    assert "proxy_next_upstream_tries 0;" in lines
    assert any(x.startswith("proxy_next_upstream_timeout ") for x in lines)
