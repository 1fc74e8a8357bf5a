"""Where `gateway serve` logs go and how they read: stderr, one record per line.

Two formats: `text` (`2026-11-01 12:00:00,123 INFO gateway: ...`, for people) and
`json` (one JSON object per line: ts, level, logger, message, pid, then any field a
call passed with `extra=`, and `exc` for a traceback), for log shippers, which would
otherwise split a traceback or a multi-line message into several records.

Third-party libraries that can carry data in their log records are held at WARNING
whatever `--log-level` says: aiosqlite's DEBUG lines print each statement's
parameters (usage rows, stored Responses with the prompt and answer text), and
asyncpg's and redis's could as well.  `--log-level DEBUG` is for the gateway's own
lines, which never hold a key or prompt text.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final, TextIO

FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# libraries whose records may quote data (SQL parameters, commands and their arguments)
QUIET_LOGGERS: Final = ("aiosqlite", "asyncpg", "redis")

# every attribute a plain LogRecord has: anything else on a record came from `extra=`
_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",  # 3.12+
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            # UTC with milliseconds and a Z: sortable, and no shipper guesses a time zone
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # with server.workers, which process said it
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in entry and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ASCII only: the line survives any stderr encoding; default=str: an odd extra
        # value (a Path, an exception) must not cost the whole record
        return json.dumps(entry, ensure_ascii=True, default=str)


class _GatewayHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that setting up again replaces it rather than adding a second one."""


def setup_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every record at `level` and above to stderr (or `stream`) in `fmt`.
    Called once by `gateway serve` before any worker forks: workers inherit it."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _GatewayHandler)]:
        root.removeHandler(old)
    handler = _GatewayHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
