"""The log line every component writes: one JSON object per line on stderr, with the same keys.

The webhook, the controller (kopf's records included), the agent runtime and ``python -m certs``
all log through :class:`JsonLineFormatter`, so one ``jq`` query reads every component's logs::

    kubectl logs ... | jq -c 'select(.level == "error") | {time, logger, message, exception}'

=============  ========  ======================================================================
key            type      meaning
=============  ========  ======================================================================
``time``       string    when, ISO 8601 in UTC with milliseconds (``2026-01-02T03:04:05.678+00:00``)
``level``      string    ``debug``, ``info``, ``warning``, ``error`` or ``critical``
``logger``     string    the logger's name: ``webhook.admission``, ``agent_runtime``,
                         ``kopf.objects``, ``uvicorn.error``, ``py.warnings``, ...
``message``    string    what happened
``exception``  string    the traceback; only on records that carry one
=============  ========  ======================================================================

Context passed with ``extra={...}`` becomes top-level keys beside those: ``task_id``, ``uid`` (of
an AdmissionReview), ``kind``, ``namespace``, ``object_name``, ``error``... An extra that would
clash with a key above is written as ``extra_<key>``.  kopf's per-object records carry kopf's
reference to the object; it is written as ``kind``, ``namespace`` and ``object_name`` (kopf's
internal attributes, its settings among them, and uvicorn's colour-coded copy of the message are
left out).

What goes in is the callers' responsibility: no prompt text, object bodies or secrets (the runtime
passes prompts and outputs only with ``AGENTOPS_LOG_CONTENT=true``).

:class:`LogLine` is the same contract as a schema, for whoever reads the lines.

May import: nothing of ours.  :func:`configure`, called once from each component's ``__main__``,
is the only side effect: it sets up the root logger's one handler.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import sys
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

#: The keys of every line, in the order they are written; ``exception`` only when there is one.
KEYS = ("time", "level", "logger", "message", "exception")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.  (``taskName``
# is standard from Python 3.12.)
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# Libraries' own attributes that are no context: kopf's ObjectLogger adds the object reference
# (written as fields below), the event-posting switch and the whole OperatorSettings; uvicorn adds
# its message again with terminal colour codes.
_KOPF_REF = "k8s_ref"
_LIBRARY_INTERNAL = frozenset({"k8s_ref", "k8s_skip", "settings", "color_message"})
_REF_FIELDS = (("kind", "kind"), ("namespace", "namespace"), ("name", "object_name"))


class LogLine(BaseModel):
    """One log line as a reader sees it: the keys above, and any context beside them."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    time: AwareDatetime
    level: Literal["debug", "info", "warning", "error", "critical"]
    logger: str
    message: str
    exception: str | None = None

    @classmethod
    def parse(cls, line: str) -> LogLine:
        """The line as a :class:`LogLine`; ``pydantic.ValidationError`` when it is not one."""
        return cls.model_validate_json(line)


class JsonLineFormatter(logging.Formatter):
    """Formats a record as one :class:`LogLine` (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        ref = getattr(record, _KOPF_REF, None)
        if isinstance(ref, dict):
            for source, key in _REF_FIELDS:
                if ref.get(source):
                    entry[key] = ref[source]
        for key, value in vars(record).items():
            if key in _STANDARD or key in _LIBRARY_INTERNAL or key.startswith("_"):
                continue
            entry[f"extra_{key}" if key in KEYS else key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        try:
            return json.dumps(entry, default=str, ensure_ascii=False, allow_nan=False)
        except ValueError:
            # NaN or infinity somewhere in the context: JSON has no such numbers, so say them as text.
            return json.dumps(_finite(entry), default=str, ensure_ascii=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def configure(level: int | str = logging.INFO, *, quiet: Iterable[str] = ()) -> None:
    """Every record of the process, ours and the libraries', as :class:`LogLine` JSON on stderr.

    ``quiet`` names loggers held at WARNING (chatty libraries).  Python warnings and uncaught
    exceptions (main thread and other threads) are logged too, so that nothing a component writes
    to stderr is in another format.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


_uncaught = logging.getLogger("uncaught")


def _log_uncaught(exc_type: type[BaseException], exc: BaseException, traceback: TracebackType | None) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, traceback)
        return
    _uncaught.critical("uncaught exception; exiting", exc_info=(exc_type, exc, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if issubclass(args.exc_type, SystemExit):  # as the default hook: a thread's exit is no error
        return
    name = args.thread.name if args.thread is not None else "unknown"
    exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    _uncaught.error("uncaught exception in thread %s", name, exc_info=exc_info)
