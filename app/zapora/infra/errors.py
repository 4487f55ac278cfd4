"""Exceptions that mean "a dependency is unavailable", as opposed to a bug."""

from __future__ import annotations

import psycopg
import redis.exceptions
from psycopg_pool import PoolTimeout

REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
)
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (psycopg.OperationalError, PoolTimeout)
# UNAVAILABLE is used where Redis is the dependency at stake.
UNAVAILABLE = REDIS_UNAVAILABLE
ANY_UNAVAILABLE = REDIS_UNAVAILABLE + DATABASE_UNAVAILABLE
