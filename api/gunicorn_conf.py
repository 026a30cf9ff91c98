"""gunicorn settings for tally's API (override any of them with GUNICORN_CMD_ARGS)."""

import os
import tempfile

from prometheus_client import multiprocess

bind = os.environ.get("TALLY_BIND", "127.0.0.1:8000")
# Threads, because a POST may wait a few seconds for the worker's announcement.
worker_class = "gthread"
workers = int(os.environ.get("TALLY_API_PROCESSES", "2"))
threads = int(os.environ.get("TALLY_API_THREADS", "16"))
# On SIGTERM: stop accepting, finish the requests in flight (up to this long), exit.
graceful_timeout = 30
timeout = 60
# No cap on the request line: a long filter is answered 400 by tally with the field
# at fault, not 414 by gunicorn (put a proxy in front to cap it, if needed).
limit_request_line = 0

# Metrics from every worker process are aggregated through files in this folder;
# it must be set before any worker imports prometheus_client.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="tally-metrics-"))


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


accesslog = "-"
_json = {
    "()": "pythonjsonlogger.json.JsonFormatter",
    "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
    "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
}
_handler = {
    "class": "logging.StreamHandler",
    "formatter": "json",
    "filters": ["context"],
    "stream": "ext://sys.stdout",
}
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "shared.logs.ContextFilter", "service": "api"}},
    "formatters": {"json": _json},
    "handlers": {"stdout": _handler},
    "root": {"handlers": ["stdout"], "level": "INFO"},
    "loggers": {
        "gunicorn.error": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
    },
}
