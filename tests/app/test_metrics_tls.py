"""The metrics listeners (the API's in gunicorn's master, the worker's) as the app role runs
them: with ZAPORA_TLS_CERT_FILE/KEY_FILE set they serve TLS 1.3 only with the colour port's
certificate, checked from outside like the colour port (test_server): plain HTTP and TLS 1.2
get no answer, a client verifying against the CA gets the metrics text."""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app import servers as srv
from zapora.infra.metrics import start_metrics_server


@pytest.fixture
def tls_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A metrics listener with a certificate naming 127.0.0.1; its URL and the CA."""
    ca = srv.make_ca(tmp_path, "internal-ca")
    crt, key = srv.make_leaf(tmp_path, "internal-ca", "api", "DNS:api.zapora.internal,IP:127.0.0.1")
    monkeypatch.setenv("ZAPORA_TLS_CERT_FILE", str(crt))
    monkeypatch.setenv("ZAPORA_TLS_KEY_FILE", str(key))
    port = srv.free_port()
    server = start_metrics_server("127.0.0.1", port)
    try:
        yield f"https://127.0.0.1:{port}/metrics", ca
    finally:
        server.shutdown()
        server.server_close()


def test_the_metrics_port_serves_tls_1_3_only(tls_metrics: tuple[str, Path]) -> None:
    url, ca = tls_metrics
    verified = ssl.create_default_context(cafile=ca)
    response = httpx.get(url, verify=verified, timeout=5)
    assert response.status_code == 200
    assert "zapora_http_requests_total" in response.text
    tls12 = ssl.create_default_context(cafile=ca)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, verify=tls12, timeout=5)
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https://", "http://"), timeout=5)
    # Verified by the name Prometheus checks (tls_config server_name), not only the address.
    host, port = url.removeprefix("https://").split("/")[0].split(":")
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        verified.wrap_socket(raw, server_hostname="api.zapora.internal") as tls,
    ):
        assert tls.version() == "TLSv1.3"


def test_a_silent_client_does_not_stall_the_scrapes(tls_metrics: tuple[str, Path]) -> None:
    """A connection that never starts its handshake holds only its own thread (with
    prometheus_client's certfile= the accept loop itself waited on it, without end)."""
    url, ca = tls_metrics
    host, port = url.removeprefix("https://").split("/")[0].split(":")
    with socket.create_connection((host, int(port))):
        time.sleep(0.2)
        verified = ssl.create_default_context(cafile=ca)
        assert httpx.get(url, verify=verified, timeout=5).status_code == 200


def test_a_renewed_certificate_is_served_without_a_restart(
    tls_metrics: tuple[str, Path], tmp_path: Path
) -> None:
    """The app role renews the certificate by rename; neither process restarts then."""
    url, ca = tls_metrics
    crt, key = Path(os.environ["ZAPORA_TLS_CERT_FILE"]), Path(os.environ["ZAPORA_TLS_KEY_FILE"])
    new_crt, new_key = srv.make_leaf(tmp_path, "internal-ca", "api2", "IP:127.0.0.1")
    os.replace(new_key, key)
    os.replace(new_crt, crt)
    host, port = url.removeprefix("https://").split("/")[0].split(":")
    served = ssl.get_server_certificate((host, int(port)), ca_certs=str(ca), timeout=5)
    assert served.strip() == crt.read_text().strip()


def test_without_a_certificate_the_metrics_port_is_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZAPORA_TLS_CERT_FILE", raising=False)
    monkeypatch.delenv("ZAPORA_TLS_KEY_FILE", raising=False)
    port = srv.free_port()
    server = start_metrics_server("127.0.0.1", port)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
    finally:
        server.shutdown()
        server.server_close()
