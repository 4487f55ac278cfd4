"""Redis client whose commands appear as client spans in traces.

With Sentinel addresses configured the client is redis-py's Sentinel-managed client: every
new connection asks the Sentinels for the current primary, and a connection to a node that
was demoted is dropped (READONLY, or Sentinel's CLIENT KILL), so after a failover the next
command reaches the new primary without a restart. Stream entries can be made to wait for
replicas (WAIT on the XADD's own connection), so an entry the caller saw succeed survives a
failover.
"""

from __future__ import annotations

import ssl
from typing import Any, cast

from opentelemetry.trace import SpanKind
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisError

from zapora.infra.breaker import BreakerRetry, CircuitBreaker
from zapora.infra.tracing import tracer
from zapora.settings import Settings


class NotReplicatedError(RedisError):
    """A write reached the primary but not the replicas asked for within the timeout."""


class TracedRedis(Redis):
    # WAIT after XADD: replicas that must have the entry, and how long to wait for them.
    wait_replicas: int = 0
    wait_timeout_ms: int = 0
    breaker: CircuitBreaker | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        name = str(args[0]) if args else "?"
        with tracer.start_as_current_span(f"redis {name}", kind=SpanKind.CLIENT) as span:
            span.set_attribute("db.system", "redis")
            span.set_attribute("db.operation", name)
            if self.wait_replicas and name.upper() == "XADD":
                return await self._xadd_replicated(args, options)
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    async def _xadd_replicated(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        # One connection for both: WAIT counts the replicas that have this client's writes.
        async with self.pipeline(transaction=False) as pipe:
            pipe.execute_command(*args, **options)
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            entry_id, acked = await pipe.execute()
        if int(acked) < self.wait_replicas:
            raise NotReplicatedError(
                f"stream entry {entry_id!r} reached {acked} of {self.wait_replicas} replicas"
                f" in {self.wait_timeout_ms} ms"
            )
        return entry_id


def parse_sentinels(value: str) -> list[tuple[str, int]]:
    """'host:port,host:port' (the port defaults to 26379) as address pairs."""
    addresses = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        addresses.append((host, int(port)) if sep else (part, 26379))
    return addresses


def tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py's TLS arguments: the server's certificate verified against the internal CA
    and its name (the address connected to), TLS 1.3 only; none without a CA file. A URL
    client takes them with the rediss:// scheme (redis_url_of), a Sentinel one with ssl."""
    if settings.redis_tls_ca_file is None:
        return {}
    return {
        "ssl_ca_certs": str(settings.redis_tls_ca_file),
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_min_version": ssl.TLSVersion.TLSv1_3,
    }


def redis_url_of(settings: Settings) -> str:
    """redis_url, with the rediss:// scheme when TLS is on."""
    if settings.redis_tls_ca_file is not None and settings.redis_url.startswith("redis://"):
        return "rediss://" + settings.redis_url.removeprefix("redis://")
    return settings.redis_url


def redis_from_settings(settings: Settings) -> TracedRedis:
    """The API's client: through Sentinel when redis_sentinels is set, else redis_url."""
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    common: dict[str, Any] = {
        "username": settings.redis_username,
        "password": password,
        "socket_timeout": settings.redis_socket_timeout_seconds,
        "socket_connect_timeout": settings.redis_connect_timeout_seconds,
        **tls_options(settings),
    }
    # A dropped connection is retried once at once on a fresh one (a pooled connection the
    # server closed, or one to a demoted primary: with Sentinel the reconnect asks for the
    # current primary). When that fails too, or a command times out, the breaker opens and
    # commands skip Redis until its probe gets an answer (infra/breaker.py). A timeout is not
    # retried: the command may be running, and the caller should not wait twice.
    breaker = CircuitBreaker(
        settings.redis_breaker_cooldown_seconds, settings.redis_connect_timeout_seconds
    )
    retry = BreakerRetry(ExponentialBackoff(cap=1.0, base=0.1), settings.redis_retries, breaker)
    client: TracedRedis
    if settings.redis_sentinels:
        ssl_on: dict[str, Any] = {"ssl": True} if settings.redis_tls_ca_file is not None else {}
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            parse_sentinels(settings.redis_sentinels),
            # A Sentinel that does not answer is asked once, then the next one. redis-py's
            # default retry (10 attempts, each paying the connect timeout) held every new
            # connection about 25 s when the host of the first Sentinel listed was killed on
            # the lab (bench/failover.py), until that host came back.
            sentinel_kwargs={
                **common,
                **ssl_on,
                "socket_timeout": settings.redis_connect_timeout_seconds,
                "retry": Retry(NoBackoff(), 0),
            },
        )
        client = cast(
            TracedRedis,
            sentinel.master_for(
                settings.redis_sentinel_master,
                redis_class=TracedRedis,
                db=_db_of(settings.redis_url),
                decode_responses=False,
                health_check_interval=30,
                retry=retry,
                **common,
                **ssl_on,
            ),
        )
    else:
        client = cast(
            TracedRedis,
            TracedRedis.from_url(
                redis_url_of(settings),
                decode_responses=False,
                health_check_interval=30,
                retry=retry,
                **common,
            ),
        )
    breaker.probe = client.ping
    client.breaker = breaker
    client.wait_replicas = settings.redis_wait_replicas
    client.wait_timeout_ms = settings.redis_wait_timeout_ms
    return client


def _db_of(url: str) -> int:
    path = url.split("://", 1)[-1].partition("/")[2].split("?", 1)[0]
    return int(path) if path.isdigit() else 0
