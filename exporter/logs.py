"""Structured logging: one JSON object per line, and a guard that logs a repeated problem once."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

# Attributes every LogRecord has; anything else passed in `extra=` becomes a JSON field.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp (`tailwatch episodes`) logs every client disconnect at INFO.
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


class LogOnce:
    """Logs the first occurrence of each problem key, then at most once per `interval`
    with the number suppressed, so bad input cannot flood the log."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def log(
        self,
        level: int,
        key: str,
        msg: str,
        *args: object,
        exc_info: BaseException | None = None,
    ) -> None:
        """Log `msg % args` at `level` unless `key` was logged less than `interval` ago; the
        record after a quiet spell carries `suppressed`, how many were left out."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        extra = {"suppressed": suppressed} if suppressed else {}
        self._logger.log(level, msg, *args, exc_info=exc_info, extra=extra)

    def forget(self, key: str) -> None:
        """Start `key` afresh: its next occurrence is logged at once (a new streak)."""
        self._last.pop(key, None)
        self._suppressed.pop(key, None)
