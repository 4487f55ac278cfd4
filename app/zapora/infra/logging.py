"""loguru writing one JSON object per line on stdout (the log pipeline's field contract)."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC
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


def setup_logging(level: str = "INFO") -> None:
    logger.remove()
    logger.add(_sink, level=level.upper(), backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[InterceptHandler()], level=level.upper(), force=True)
    # The access line comes from our middleware, with more fields than uvicorn's.
    logging.getLogger("uvicorn.access").disabled = True
