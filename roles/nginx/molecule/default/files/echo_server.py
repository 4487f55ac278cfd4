"""A small real HTTP upstream for the nginx scenario: answers every request with JSON
naming its colour, the method, path and the headers it received. /_test/status/NNN
answers with that status; /_test/close drops the connection without an answer (the
edge then has no upstream response: 502)."""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    colour = "unknown"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/_test/close"):
            self.close_connection = True
            self.connection.shutdown(2)
            return
        status = 200
        if self.path.startswith("/_test/status/"):
            status = int(self.path.rsplit("/", 1)[1])
        payload = json.dumps(
            {
                "colour": self.colour,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_bytes": len(body),
            }
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        # Headers the edge must not pass on.
        self.send_header("X-Powered-By", "echo-server")
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


if __name__ == "__main__":
    Echo.colour = sys.argv[1]
    ThreadingHTTPServer(("0.0.0.0", int(sys.argv[2])), Echo).serve_forever()  # noqa: S104
