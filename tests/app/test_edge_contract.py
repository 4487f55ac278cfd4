"""What the edge answers for the API itself agrees with the API: the Allow header of the 405
nginx answers on its own (it refuses TRACE before any location) lists the methods the API
serves on that path. The running edge's answer is tests/e2e/test_edge_contract.py's part."""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from pathlib import Path

import jinja2
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

ROLE = Path(__file__).resolve().parents[2] / "roles" / "nginx"


def _api_methods(app: FastAPI) -> dict[str, set[str]]:
    methods: dict[str, set[str]] = defaultdict(set)
    for router in app.state.routers:
        for route in router.routes:
            methods[route.path] |= set(route.methods) - {"HEAD"}
    return dict(methods)


def _allow_map() -> list[tuple[re.Pattern[str], str]]:
    """The $zapora_allow map's entries, rendered from the role's template with plain Jinja2
    (Ansible's regex_replace stood in for by re.sub), in the template's order."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"), autoescape=False)
    env.filters["regex_replace"] = lambda value, pattern, repl: re.sub(pattern, repl, value)
    source = (ROLE / "templates" / "nginx.conf.j2").read_text()
    block = source[source.index('    map "$status $request_uri" $zapora_allow {') :]
    block = block[: block.index("    }\n") + 6]
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    text = env.from_string(block).render(_nginx_api_methods=role_vars["_nginx_api_methods"])
    entries = re.findall(r'^\s+"~(.+)" "(.+)";$', text, re.MULTILINE)
    assert len(entries) == len(role_vars["_nginx_api_methods"]), text
    return [(re.compile(pattern), allow) for pattern, allow in entries]


def _allow(entries: list[tuple[re.Pattern[str], str]], key: str) -> str:
    # nginx takes a map's regular expressions in order, the first match wins.
    return next((allow for pattern, allow in entries if pattern.search(key)), "")


def test_the_edge_allow_header_names_the_api_methods(client: TestClient) -> None:
    app: FastAPI = client.app  # type: ignore[assignment]
    api = _api_methods(app)
    entries = _allow_map()
    some_id = str(uuid.uuid4())
    for path, methods in api.items():
        concrete = re.sub(r"\{[a-z_]+(:uuid)?\}", some_id, path)
        want = ", ".join(sorted(methods))
        assert _allow(entries, f"405 {concrete}") == want, path
        assert _allow(entries, f"405 {concrete}?limit=5") == want, path
        # Only on 405, and not on a longer path.
        assert _allow(entries, f"404 {concrete}") == ""
        assert _allow(entries, f"405 {concrete}/x/y/z") == "", path
    assert _allow(entries, "405 /users/me") == "GET"
    assert _allow(entries, "405 /nowhere") == ""


def test_every_operation_documents_the_edge_answers(client: TestClient) -> None:
    """Clients call the API through the edge: its WAF's 403 and its rate limit's 429 (with
    Retry-After) are in the document for every operation, as problem+json."""
    doc = client.get("/openapi.json").json()
    operations = [op for path in doc["paths"].values() for op in path.values()]
    assert len(operations) >= 20
    for operation in operations:
        responses = operation["responses"]
        assert {"403", "429"} <= set(responses), operation["operationId"]
        for status in ("403", "429"):
            assert set(responses[status]["content"]) == {"application/problem+json"}
        assert "Retry-After" in responses["429"]["headers"]
        assert "WAF" in responses["403"]["description"]
