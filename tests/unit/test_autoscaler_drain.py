"""The autoscaler's drain (roles/app/files/zapora_autoscaler.py, Host.refuse_new_connections):
with the real nft in a network namespace of the test's own (`unshare --net`, so the
machine's firewall is never touched), a new connection to the draining port is refused
while a kept-alive connection opened before goes on being served, and after the drain the
port accepts again and the table is gone. Docker's DNAT path (the forward hook) needs an
engine in the namespace and is not covered here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.not_run import record

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import http.server, socket, subprocess, sys, threading
sys.path.insert(0, sys.argv[1])
import zapora_autoscaler as A

class Answer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 18111), Answer)
threading.Thread(target=server.serve_forever, daemon=True).start()

def get(sock):
    sock.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    return sock.recv(1000).split(b"\\r\\n")[0].decode()

kept = socket.create_connection(("127.0.0.1", 18111))
print("before", get(kept))
host = A.Host(A.parse(["--min=1", "--max=2"]), None)
host.refuse_new_connections(18111)
try:
    socket.create_connection(("127.0.0.1", 18111), timeout=3)
    print("new accepted")
except ConnectionRefusedError:
    print("new refused")
print("kept", get(kept))
host.accept_again()
print("after", get(socket.create_connection(("127.0.0.1", 18111))))
print("ruleset", len(subprocess.run(["nft", "list", "ruleset"], capture_output=True,
                                    text=True, check=True).stdout.strip()))
"""


def test_a_draining_port_refuses_new_connections_and_serves_kept_ones() -> None:
    unshare, nft = shutil.which("unshare"), shutil.which("nft", path="/usr/sbin:/sbin:/usr/bin")
    if not unshare or not nft:
        record("the autoscaler's drain with nft", "no unshare or nft on this machine")
        return
    program = [sys.executable, "-c", SCRIPT, str(REPO / "roles" / "app" / "files")]
    result = subprocess.run(
        [unshare, "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "drain", *program],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": f"{Path(nft).parent}:/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    if result.returncode != 0 and "Operation not permitted" in result.stderr:
        record("the autoscaler's drain with nft", "no network namespace allowed here")
        return
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "before HTTP/1.1 200 OK",
        "new refused",
        "kept HTTP/1.1 200 OK",
        "after HTTP/1.1 200 OK",
        "ruleset 0",
    ]
