"""Redis client whose commands appear as client spans in traces."""

from __future__ import annotations

from typing import Any, cast

from opentelemetry.trace import SpanKind
from redis.asyncio import Redis

from zapora.infra.tracing import tracer


class TracedRedis(Redis):
    async def execute_command(self, *args: Any, **options: Any) -> Any:
        name = str(args[0]) if args else "?"
        with tracer.start_as_current_span(f"redis {name}", kind=SpanKind.CLIENT) as span:
            span.set_attribute("db.system", "redis")
            span.set_attribute("db.operation", name)
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


def create_redis(url: str, password: str | None = None) -> TracedRedis:
    client = TracedRedis.from_url(
        url, password=password, decode_responses=False, health_check_interval=30
    )
    return cast(TracedRedis, client)
