"""Structured logs: one JSON object per line on stderr (or plain text for local debugging)."""

from __future__ import annotations

import json
import logging
import sys
import time

from starling.config import get_settings

_RESERVED = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON with time, level, logger, message, any ``extra=`` fields and the traceback."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "severity": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str) -> logging.Logger:
    """Route every logger to stderr in the configured format and level; returns the service's logger."""
    settings = get_settings()
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    return logging.getLogger(f"starling.{service}")


class ThrottledLog:
    """Repeated failures as one line per key per interval, carrying how many were folded into it.

    While a dependency is down every request fails the same way; logging each (with a traceback) would
    flood the log. The Prometheus counters still count every one.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, tuple[float, int]] = {}  # key -> (time of the last line, events folded since)

    def warning(self, key: str, message: str, **fields: object) -> bool:
        """Log now if ``key`` was quiet for ``interval_s``; else count it for the next line. True if logged."""
        now = time.monotonic()
        last, folded = self._last.get(key, (float("-inf"), 0))
        if now - last < self.interval_s:
            self._last[key] = (last, folded + 1)
            return False
        self._last[key] = (now, 0)
        self.logger.warning(message, extra={**fields, "key": key, "repeats_since_last_line": folded})
        return True
