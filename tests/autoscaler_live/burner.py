"""A stand-in api replica for the autoscaler's live test: /health/ready 200 over TLS on
port 8443, and a CPU burner that spins while the file BURN exists (a bind mount the test
touches). Not the API: the test is about the autoscaler, its cgroup reads and its Compose
actions, not about the API's code."""

from __future__ import annotations

import http.server
import os
import ssl
import threading
import time

BURN = os.environ.get("BURN", "/live/burn")
CERT, KEY = "/live/tls/api.crt", "/live/tls/api.key"


class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health/ready" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def serve() -> None:
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 8443), Ready)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERT, KEY)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


threading.Thread(target=serve, daemon=True).start()
while True:
    if os.path.exists(BURN):
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            pass
    else:
        time.sleep(0.5)
