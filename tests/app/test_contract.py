"""The OpenAPI document describes what the API does: Schemathesis runs every check it has
(status codes, content types, headers, response schemas, positive data accepted, negative data
rejected, auth enforced, deleted resources gone, ...) against `zapora serve` with two workers
on the real PostgreSQL and Redis, as an admin. `/auth/logout` is excluded: it would revoke
the token the run uses. The run is bounded (examples per operation, wall-clock timeout) and
seeded, so it is repeatable; ZAPORA_CONTRACT_MAX_EXAMPLES raises the depth for a long run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests import schemathesis_run

from . import servers as srv
from .conftest import Catalog, People
from .test_server import start_gunicorn

MAX_EXAMPLES = int(os.environ.get("ZAPORA_CONTRACT_MAX_EXAMPLES", "25"))
MAX_TIME_SECONDS = int(os.environ.get("ZAPORA_CONTRACT_MAX_TIME", "90"))

# A list cursor has a documented shape (pattern, length), but only the cursors the API issued
# verify: any other string of that shape is answered 400 (documented on these operations).
# Schemathesis cannot mint a signed cursor, so for these two operations a 400 is an accepted
# answer to "positive" data; every other check and every other operation keep their defaults.
CONFIG = """
[[operations]]
include-path-regex = "^/(orders|audit-events)$"
include-method = "GET"
checks.positive_data_acceptance.expected-statuses = [
  "2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx",
]
"""


def _user_ids(db: psycopg.Connection[dict[str, Any]]) -> set[str]:
    return {str(row["id"]) for row in db.execute("SELECT id FROM users")}


def _actions_by(db: psycopg.Connection[dict[str, Any]], actor_id: str) -> dict[str, int]:
    rows = db.execute(
        "SELECT action, count(*) AS n FROM audit_events WHERE actor_id = %s GROUP BY action",
        (actor_id,),
    )
    return {row["action"]: row["n"] for row in rows}


def test_openapi_contract_holds(
    servers: srv.Servers,
    secret_file: Path,
    tmp_path: Path,
    client: TestClient,
    people: People,
    catalog: Catalog,
    db: psycopg.Connection[dict[str, Any]],
) -> None:
    # The per-user write limit would answer most of the run's writes 429 (documented, but it
    # hides the success paths); the limit itself is tested in test_degradation.py.
    url, proc = start_gunicorn(
        servers, secret_file, tmp_path, ZAPORA_USER_WRITE_LIMIT_PER_MINUTE="100000"
    )
    # What the fixtures left, measured before the run: exactly their four people, and nothing
    # yet done with the admin's token.
    people_ids = {p.id for p in (people.customer, people.other, people.staff, people.admin)}
    assert _user_ids(db) == people_ids
    assert _actions_by(db, people.admin.id) == {}
    try:
        token = people.admin.tokens["access_token"]
        returncode, output = schemathesis_run.run(
            f"{url}/openapi.json",
            CONFIG,
            tmp_path,
            f"Bearer {token}",
            seed="20261125",
            request_timeout=20,
            max_time=MAX_TIME_SECONDS,
            extra=("--max-examples", str(MAX_EXAMPLES)),
        )
        assert returncode == 0, output[-6000:]
        schemathesis_run.assert_every_operation_tested(output)
        # The run really exercised the API beyond 4xx answers: registrations it sent were
        # accepted and stored, and writes only staff may make were accepted with the admin's
        # token and committed (each is audited under the admin's id).
        assert _user_ids(db) > people_ids
        admin_actions = _actions_by(db, people.admin.id)
        assert admin_actions.get("menu.created", 0) > 0, admin_actions
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/menus"), ("get", "/menus/{menu_id}"), ("get", "/menu-items/{item_id}")],
)
def test_public_reads_need_no_token(client: TestClient, method: str, path: str) -> None:
    doc = client.get("/openapi.json").json()
    operation = doc["paths"][path][method]
    assert "security" not in operation
    assert "401" not in operation["responses"]


def test_every_error_is_documented_as_problem_json(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert "Problem" in doc["components"]["schemas"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            assert "503" in codes, (method, path)
            if operation.get("security"):
                assert "401" in codes, (method, path)
            for code, response in operation["responses"].items():
                if int(code) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (code, path)


def test_password_rules_are_in_the_schema(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    password = doc["components"]["schemas"]["RegisterIn"]["properties"]["password"]
    assert password["minLength"] == 10
    assert password["maxLength"] == 72


def test_login_form_fields_refuse_what_the_server_refuses(client: TestClient) -> None:
    # Schemathesis found a form login with a NUL in the username that the document allowed and
    # the server answered 422; the form fields must carry the JSON fields' constraints.
    doc = client.get("/openapi.json").json()
    content = doc["paths"]["/auth/login"]["post"]["requestBody"]["content"]
    json_fields = content["application/json"]["schema"]["properties"]
    form_fields = content["application/x-www-form-urlencoded"]["schema"]["properties"]
    for form_name, json_name in (("username", "email"), ("password", "password")):
        for key in ("pattern", "maxLength", "minLength"):
            assert form_fields[form_name].get(key) == json_fields[json_name].get(key), (
                form_name,
                key,
            )
    r = client.post("/auth/login", data={"username": "a\x00b@example.com", "password": "x"})
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
