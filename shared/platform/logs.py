"""Structured JSON logs, one line per event, carrying the ids that tie an adjustment together."""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

# The ids of what this thread is working on; every log line carries those that are set.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
CONTEXT_FIELDS = {"request_id": request_id}


# A log line names at most this many ids of a list, and counts them all.
LISTED_IDS = 20


def some_ids(name: str, ids: Sequence[object]) -> dict[str, object]:
    """`extra` for a log line about `ids`: the first LISTED_IDS, and how many there are
    (a line naming thousands of accounts was 21 KB)."""
    return {name: ids[:LISTED_IDS], name.removesuffix("_ids") + "_count": len(ids)}


def request_id_of(incoming: str) -> str:
    """The caller's X-Request-ID if it is a sane one (printable ASCII, at most 200
    characters), else a new id."""
    valid = 0 < len(incoming) <= 200 and incoming.isascii() and incoming.isprintable()
    return incoming if valid else uuid.uuid4().hex


class ContextFilter(logging.Filter):
    """Copy the context ids (and the service name) onto each record."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        for name, variable in CONTEXT_FIELDS.items():
            if not hasattr(record, name):
                setattr(record, name, variable.get())
        return True


# The fields of every JSON log line, and the names they are written under.
JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
JSON_RENAMED = {"asctime": "time", "levelname": "level", "name": "logger"}


def json_formatter() -> JsonFormatter:
    """JSON lines whose `time` is RFC 3339 in UTC, to the millisecond:
    2026-12-03T22:54:05.123Z."""
    formatter = JsonFormatter(JSON_FORMAT, rename_fields=JSON_RENAMED)
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


def json_handler(service: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(json_formatter())
    handler.addFilter(ContextFilter(service))
    return handler


def configure_logging(service: str, level: int = logging.INFO, timers: Iterable[str] = ()) -> None:
    """Send every log record of this process to stdout as one JSON object per line; the
    routine lines of the `timers` tasks at DEBUG (TimersAtDebug)."""
    handler = json_handler(service)
    handler.addFilter(TimersAtDebug(timers))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class TimersAtDebug(logging.Filter):
    """Celery's INFO lines about a timer's run (beat sending it, a worker receiving it,
    its success) become DEBUG lines, so that an idle worker and beat write nothing at
    INFO; what a timer did is logged at INFO by the task itself. `timers`: the names of
    the tasks beat sends."""

    def __init__(self, timers: Iterable[str]) -> None:
        super().__init__()
        self.timers = frozenset(timers)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or self._task_of(record) not in self.timers:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)

    @staticmethod
    def _task_of(record: logging.LogRecord) -> object:
        if record.name == "celery.beat":  # "Scheduler: Sending due task %s (%s)"
            args = record.args if isinstance(record.args, tuple) else ()
            return args[1] if record.msg.startswith("Scheduler: Sending") and args else None
        data = getattr(record, "data", None)  # celery.worker.strategy, celery.app.trace
        return data.get("name") if isinstance(data, dict) else None
