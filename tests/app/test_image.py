"""The container image builds from the hashed lock on the lab's Debian 13 base, runs as a
non-root user, passes its HEALTHCHECK, serves the API against real servers, and stops cleanly
on SIGTERM."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from . import servers as srv

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = (
    os.environ.get("ZAPORA_APP_BASE_IMAGE")
    or os.environ.get("ZAPORA_BASE_IMAGE")
    or "zapora/debian13-systemd:current"
)


def _docker(*args: str, timeout: float = 60, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


@pytest.fixture(scope="module")
def image() -> str:
    # Not a skip: `make test-app` builds the base image first, so a missing engine or
    # image is a broken setup and must show as a failure.
    engine = subprocess.run(["docker", "info"], capture_output=True, check=False)
    assert engine.returncode == 0, "no Docker engine: run `make setup`, which starts one"
    assert _docker("image", "inspect", BASE_IMAGE).returncode == 0, (
        f"base image {BASE_IMAGE} is missing: build it with `make image`"
    )
    tag = "zapora/api:test"
    context = subprocess.Popen(
        [
            "tar",
            "-c",
            "--exclude=__pycache__",
            "requirements/app.txt",
            "app/zapora",
            "app/Dockerfile",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    build = subprocess.run(
        [
            "docker",
            "build",
            "-q",
            "-f",
            "app/Dockerfile",
            "--build-arg",
            f"BASE_IMAGE={BASE_IMAGE}",
            "-t",
            tag,
            "-",
        ],
        stdin=context.stdout,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    context.wait()
    assert build.returncode == 0, build.stderr
    return tag


def test_image_runs_healthy_and_serves(image: str, servers: srv.Servers, secret_file: Path) -> None:
    assert _docker("image", "inspect", image, "--format", "{{.Config.User}}").stdout.strip() == (
        "zapora"
    )
    port = srv.free_port()
    metrics_port = srv.free_port()  # host networking: 9110 may be taken on this machine
    name = f"zapora-api-test-{uuid.uuid4().hex[:8]}"
    secret_file.chmod(0o644)
    env = [
        "-e",
        f"ZAPORA_DATABASE_URL={servers.primary.dsn()}",
        "-e",
        f"ZAPORA_REDIS_URL={servers.redis_url}",
        "-e",
        "ZAPORA_JWT_SECRET_FILE=/run/secrets/jwt",
        "-e",
        f"ZAPORA_BIND=127.0.0.1:{port}",
        "-e",
        f"ZAPORA_METRICS_PORT={metrics_port}",
        "-e",
        "ZAPORA_METRICS_HOST=127.0.0.1",
        "-v",
        f"{secret_file}:/run/secrets/jwt:ro",
        # Host networking lets the container reach the test servers on loopback.
        "--network",
        "host",
    ]
    migrate = _docker("run", "--rm", *env, image, "zapora", "migrate")
    assert migrate.returncode == 0, migrate.stderr
    run = _docker("run", "-d", "--name", name, *env, image)
    assert run.returncode == 0, run.stderr
    try:
        deadline = time.monotonic() + 90
        health = ""
        while time.monotonic() < deadline:
            health = _docker("inspect", name, "--format", "{{.State.Health.Status}}").stdout.strip()
            if health == "healthy":
                break
            time.sleep(1)
        assert health == "healthy", _docker("logs", name).stdout
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/health/ready").status_code == 200
        r = httpx.post(
            url + "/auth/register",
            json={"email": "img@example.com", "password": "long enough pw", "full_name": "I"},
        )
        assert r.status_code == 201, r.text
        # Metrics on their own listener, not on the API port; no docs in production.
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert "zapora_users_registered_total" in metrics.text
        assert httpx.get(url + "/metrics").status_code == 404
        assert httpx.get(url + "/openapi.json").status_code == 404
        started = time.monotonic()
        stop = _docker("stop", "-t", "30", name)
        assert stop.returncode == 0
        assert time.monotonic() - started < 20
        code = _docker("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip()
        assert code == "0"
    finally:
        _docker("rm", "-f", name)
