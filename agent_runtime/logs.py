"""Structured JSON logs, one object per line on stderr, keyed by ``task_id`` where there is one.

Log calls pass context as ``extra={...}``; every non-standard record attribute becomes a JSON field.
Prompt and output text are only ever passed when ``AGENTOPS_LOG_CONTENT`` is true (the worker
decides); API keys are never passed at all.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else came from ``extra`` and is ours to print.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: int = logging.INFO) -> None:
    """Send the runtime's logs to stderr as JSON lines; quiet the chatty HTTP libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request line at INFO; uvicorn's access log would duplicate /metrics scrapes.
    for name in ("httpx", "httpx2", "httpcore", "anthropic", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
