"""loguru writing one JSON object per line on stdout (the log pipeline's field contract)."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message

_RESERVED = {"event"}


def _sink(message: Message) -> None:
    record = message.record
    line: dict[str, Any] = {
        "ts": record["time"].astimezone(UTC).isoformat(),
        "level": record["level"].name,
        "logger": record["name"],
        "message": record["message"],
    }
    line.update(record["extra"])
    if record["exception"] is not None:
        exc = record["exception"]
        line["error"] = f"{exc.type.__name__ if exc.type else 'Exception'}: {exc.value}"
        # The whole traceback, as one string in the same JSON line (no local variables).
        line["traceback"] = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
    sys.stdout.write(json.dumps(line, default=str, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class InterceptHandler(logging.Handler):
    """Routes stdlib logging (gunicorn, uvicorn, alembic) into the same JSON stream."""

    def emit(self, record: logging.LogRecord) -> None:
        logger.opt(depth=6, exception=record.exc_info).log(
            record.levelname if record.levelname in _LEVELS else "INFO", record.getMessage()
        )


_LEVELS = {"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"}


# Whether INFO lines are written (setup_logging's level): the access line checks it itself.
_info_on = True


def access_line(message: str, fields: dict[str, Any]) -> None:
    """The request's access line, in the shape _sink writes, straight to stdout: loguru's record
    machinery (caller frame, context copy, level lookup) cost more CPU than the rest of the
    request middleware together (issue 19's profile of the order routes)."""
    if not _info_on:
        return
    line: dict[str, Any] = {
        "ts": datetime.now(UTC).isoformat(),
        "level": "INFO",
        "logger": "zapora.api.middleware",
        "message": message,
    }
    line.update(fields)
    sys.stdout.write(json.dumps(line, default=str, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def setup_logging(level: str = "INFO") -> None:
    global _info_on
    _info_on = logger.level(level.upper()).no <= logger.level("INFO").no
    logger.remove()
    logger.add(_sink, level=level.upper(), backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[InterceptHandler()], level=level.upper(), force=True)
    # The access line comes from our middleware, with more fields than uvicorn's.
    logging.getLogger("uvicorn.access").disabled = True
