"""One pure-ASGI middleware for what every request needs: request id, trace id, body limit,
RED metrics and the access log line. Pure ASGI because it runs on the hot path."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from fastapi import HTTPException
from loguru import logger
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zapora.api.problems import for_exception, problem
from zapora.infra.logging import access_line
from zapora.infra.metrics import DURATION, REQUESTS
from zapora.infra.tracing import current_trace_id, tracing_enabled

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_READ = frozenset((b"x-request-id", b"content-length", b"traceparent", b"x-forwarded-for"))


class BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body reader passes it on as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The body exceeds {limit} bytes.")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, trusted_proxy_hops: int = 0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.trusted_proxy_hops = trusted_proxy_hops
        # The labelled series of each (method, route, status) seen, looked up once: labels()
        # builds, checks and locks on every call. Bounded by the routes' templates.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Only the headers read here, not a dict of every header: this runs on every request.
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name in _READ:
                headers[name.decode("latin-1")] = value.decode("latin-1")
        request_id = headers.get("x-request-id", "")
        if not _REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex
        scope.setdefault("state", {})
        scope["state"]["request_id"] = request_id
        scope["state"]["client_ip"] = self._client_ip(scope, headers)
        method = scope["method"]
        status = 500
        response_started = False

        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            too_large = problem(413, f"The body exceeds {self.max_body_bytes} bytes.")
            too_large.headers["X-Request-ID"] = request_id
            await too_large(scope, receive, send)
            self._finish(scope, method, 413, started, request_id, "")
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        if tracing_enabled():
            # FastAPI's native telemetry opened the server span around this middleware.
            trace_id = current_trace_id()
        else:
            # No exporter: no span exists, but the caller's trace id still reaches the logs.
            trace_id = _trace_id_from_header(headers.get("traceparent", ""))
        with logger.contextualize(request_id=request_id, trace_id=trace_id):
            try:
                await self.app(scope, limited_receive, send_wrapper)
            except BodyTooLarge:
                if not response_started:
                    await _too_large(send_wrapper, scope, receive, self.max_body_bytes)
                status = 413
            except Exception as exc:  # noqa: BLE001 - every failure is answered as problem+json
                # Answered here rather than re-raised, so the server never drops the
                # connection and never logs the error a second time without our context.
                answer = for_exception(exc, scope["path"])
                if not response_started:
                    await answer(scope, receive, send_wrapper)
                status = answer.status_code if not response_started else 500
        self._finish(scope, method, status, started, request_id, trace_id)

    def _client_ip(self, scope: Scope, headers: dict[str, str]) -> str | None:
        forwarded = headers.get("x-forwarded-for")
        if self.trusted_proxy_hops and forwarded:
            chain = [part.strip() for part in forwarded.split(",") if part.strip()]
            # Only the addresses our own proxies appended can be trusted, counted from the end.
            if len(chain) >= self.trusted_proxy_hops:
                return chain[-self.trusted_proxy_hops]
        client = scope.get("client")
        return str(client[0]) if client else None

    def _finish(
        self,
        scope: Scope,
        method: str,
        status: int,
        started: float,
        request_id: str,
        trace_id: str,
    ) -> None:
        elapsed = time.perf_counter() - started
        route_obj = scope.get("route")
        route = getattr(route_obj, "path", None) or "<unmatched>"
        series = self._series.get((method, route, status))
        if series is None:
            series = (REQUESTS.labels(method, route, str(status)), DURATION.labels(method, route))
            self._series[(method, route, status)] = series
        series[0].inc()
        series[1].observe(elapsed)
        state = scope.get("state", {})
        access_line(
            f"{method} {route} {status}",
            {
                "request_id": request_id,
                "trace_id": trace_id,
                "kind": "access",
                "user_id": state.get("user_id"),
                "method": method,
                "route": route,
                "path": scope["path"],
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "client_ip": state.get("client_ip"),
            },
        )


async def _too_large(send: Send, scope: Scope, receive: Receive, limit: int) -> None:
    await problem(413, f"The body exceeds {limit} bytes.")(scope, receive, send)


def _trace_id_from_header(traceparent: str) -> str:
    parts = traceparent.split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        return parts[1].lower()
    return ""
