"""The nginx role's response headers, checked on its defaults and templates without a
converge: the role's header list against the OWASP Secure Headers Project's
recommendations, and the configuration the templates write from it. That the running
edge sends these headers with these values is tests/e2e/test_edge.py's part."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import yaml

ROLE = Path(__file__).resolve().parents[2] / "roles" / "nginx"
# The OWASP Secure Headers Project's recommended response headers (ci/headers_add.json,
# updated 2024-07-19). Clear-Site-Data is left out on purpose (docs/edge.md): on every
# response it would wipe the client's storage; it belongs on the API's logout answer.
OWASP_RECOMMENDED = {
    "Cache-Control",
    "Clear-Site-Data",
    "Content-Security-Policy",
    "Cross-Origin-Embedder-Policy",
    "Cross-Origin-Opener-Policy",
    "Cross-Origin-Resource-Policy",
    "Permissions-Policy",
    "Referrer-Policy",
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-Permitted-Cross-Domain-Policies",
}


def defaults() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    return loaded


def render(template: str, settings: dict[str, Any]) -> list[str]:
    """A role template rendered with plain Jinja2 (the two filters Ansible adds that
    these templates use are stood in for), as stripped lines."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROLE / "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # nginx configuration, not HTML
    )
    env.filters["comment"] = lambda text: f"# {text}"
    text = env.get_template(template).render(ansible_managed="managed", **settings)
    return [line.strip() for line in text.splitlines()]


def test_the_header_list_covers_the_owasp_recommendations() -> None:
    d = defaults()
    sent = {name for name, value in d["nginx_security_headers"].items() if str(value)}
    # HSTS and Cache-Control have variables of their own.
    if d["nginx_hsts_max_age"] > 0:
        sent.add("Strict-Transport-Security")
    if d["nginx_cache_control_default"]:
        sent.add("Cache-Control")
    assert OWASP_RECOMMENDED - sent == {"Clear-Site-Data"}, sorted(OWASP_RECOMMENDED - sent)


def test_hsts_is_two_years_with_subdomains() -> None:
    # The value the e2e test expects on every HTTPS answer; OWASP asks for at least a year.
    d = defaults()
    hsts = f"max-age={d['nginx_hsts_max_age']}"
    if d["nginx_hsts_include_subdomains"]:
        hsts += "; includeSubDomains"
    assert hsts == "max-age=63072000; includeSubDomains"


def test_every_header_is_added_always_and_hidden_from_upstreams() -> None:
    d = defaults()
    headers = render("security-headers.conf.j2", d)
    # `always`: error pages nginx answers itself (4xx, 5xx) carry them too.
    for name, value in d["nginx_security_headers"].items():
        if str(value):
            assert f'add_header {name} "{value}" always;' in headers, name
    assert "add_header Strict-Transport-Security $zapora_hsts always;" in headers
    assert "add_header Cache-Control $zapora_cache_control always;" in headers
    assert "add_header X-Request-ID $zapora_request_id always;" in headers
    proxy = render("proxy.conf.j2", d)
    # The edge's own headers replace the upstream's instead of doubling them, and
    # version-revealing upstream headers are dropped (the API sends none of the X-*
    # ones, so only this configuration shows them hidden).
    for name in [*d["nginx_security_headers"], "Strict-Transport-Security", "X-Request-ID"]:
        assert f"proxy_hide_header {name};" in proxy, name
    for name in ("X-Powered-By", "Server", "X-AspNet-Version", "X-Runtime"):
        assert f"proxy_hide_header {name};" in proxy, name


def test_the_api_upstream_is_tls_1_3_verified_by_the_internal_ca() -> None:
    """The edge's upstream to the API colours (upstream-tls.conf, in both API locations):
    TLS 1.3 only, verified against the internal CA and the name every app host's
    certificate carries (the app role's app_api_tls_name), sessions reused."""
    d = defaults()
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    ca = role_vars["_nginx_upstream_ca_file"]
    lines = render("upstream-tls.conf.j2", {**d, "_nginx_upstream_ca_file": ca})
    for directive in (
        "proxy_ssl_protocols TLSv1.3;",
        "proxy_ssl_verify on;",
        f"proxy_ssl_trusted_certificate {ca};",
        f"proxy_ssl_name {d['nginx_upstream_tls_name']};",
        "proxy_ssl_session_reuse on;",
    ):
        assert directive in lines, directive
    app = yaml.safe_load((ROLE.parent / "app" / "defaults" / "main.yml").read_text())
    assert d["nginx_upstream_tls_name"] == app["app_api_tls_name"]
    assert d["nginx_upstream_tls"] == dict.fromkeys(d["nginx_colour_ports"], True)
    edge = [line.strip() for line in (ROLE / "templates" / "edge.conf.j2").read_text().splitlines()]
    api_passes = [line for line in edge if "zapora_$zapora_active_colour" in line]
    assert api_passes == ["proxy_pass $zapora_upstream_scheme://zapora_$zapora_active_colour;"] * 2
    assert edge.count("include /etc/nginx/zapora/upstream-tls.conf;") == 2
