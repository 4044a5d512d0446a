"""``--log-format json``: one JSON object per log event and line, for log shippers
(journald, Vector, Fluent Bit, Filebeat) that would otherwise parse text lines."""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any, Protocol

from twisted.logger import ILogObserver, LogLevel, formatEvent
from twisted.python import logfile, usage
from twisted.python.failure import Failure
from zope.interface import implementer

LOG_FORMATS = ("text", "json")

LEGACY_KEYS = frozenset(
    ("message", "format", "isError", "system", "time", "why", "failure", "logLevel")
)
"""What twisted.python.log's events carry besides their fields (the message is formatted
from them already)."""


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _serialisable(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def event_as_json(event: dict[str, Any]) -> str:
    """The line for one twisted.logger event: ``time`` (ISO 8601, UTC), ``level``,
    ``namespace``, ``message`` (the text a text log shows), ``traceback`` for a
    failure, and in ``fields`` the event's own fields that JSON can hold."""
    level = event.get("log_level", LogLevel.info)
    record: dict[str, Any] = {
        "time": _timestamp(event.get("log_time") or 0.0),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if isinstance(event.get("failure"), Failure):
        # twisted.python.log.err(): its text is the reason and the traceback, which
        # goes on its own below.
        failure = event["failure"]
        record["message"] = event.get("why") or "Unhandled Error"
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception as e:  # a Failure that cannot render must not lose the line
            record["traceback"] = f"(traceback unavailable: {e!r})"
    fields = {
        key: value
        for key, value in event.items()
        if not key.startswith("log_") and key not in LEGACY_KEYS and _serialisable(value)
    }
    if fields:
        record["fields"] = fields
    return json.dumps(record, ensure_ascii=False)


class TextOut(Protocol):
    """A text stream: sys.stdout, or twisted.python.logfile's rotating LogFile."""

    def write(self, text: str) -> Any: ...

    def flush(self) -> Any: ...


@implementer(ILogObserver)
class JSONLineObserver:
    """Writes each event as one JSON line to ``out`` (kept: twistd then points
    ``sys.stdout`` at the log itself). Lines from other threads (Django's, through
    :class:`ForwardedRecords`) are written whole, one at a time."""

    def __init__(self, out: TextOut) -> None:
        self.out = out
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        line = event_as_json(event) + "\n"
        with self._lock:
            self.out.write(line)
            self.out.flush()


_LEVELS = (
    (logging.CRITICAL, LogLevel.critical),
    (logging.ERROR, LogLevel.error),
    (logging.WARNING, LogLevel.warn),
    (logging.INFO, LogLevel.info),
)

_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
"""What every logging record has; the rest was given as ``extra=`` (``status_code``)."""


class ForwardedRecords(logging.Handler):
    """Python ``logging`` records (django_adapter's, Django's request errors) as the
    same JSON lines: each becomes the twisted.logger event ``observer`` writes, its
    logger's name as the namespace, its ``extra=`` values as fields."""

    def __init__(self, observer: ILogObserver) -> None:
        super().__init__()
        self.observer = observer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = next((lv for no, lv in _LEVELS if record.levelno >= no), LogLevel.debug)
            event = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES}
            event.update(
                log_time=record.created,
                log_level=level,
                log_namespace=record.name,
                log_format="{log_text}",
                log_text=record.getMessage(),
            )
            if record.exc_info and record.exc_info[1] is not None:
                kind, value, traceback = record.exc_info
                event["log_failure"] = Failure(value, kind, traceback)
            self.observer(event)
        except Exception:
            self.handleError(record)


def twistd_log_file(twistd: usage.Options | None) -> TextOut:
    """Where twistd would write its text log, given its own options: stdout with
    ``-n`` (or ``--logfile -``), else ``--logfile`` (default ``twistd.log``),
    rotated by size as twistd rotates it. Raise UsageError for what JSON lines
    cannot go to (syslog) or what would replace them (``--logger``)."""
    if twistd is None:
        return sys.stdout
    if twistd.get("logger"):
        raise usage.UsageError(
            "--log-format json and twistd's --logger both choose the log observer: give one"
        )
    if twistd.get("syslog"):
        raise usage.UsageError("--log-format json writes to stdout or --logfile, not syslog")
    path = twistd.get("logfile")
    if path == "-" or (not path and twistd.get("nodaemon")):
        if not twistd.get("nodaemon"):
            raise usage.UsageError("a daemon cannot log to stdout: give --logfile or -n")
        return sys.stdout
    return logfile.LogFile.fromFullPath(path or "twistd.log")
