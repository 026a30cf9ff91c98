"""gunicorn settings for tally's API (override any of them with GUNICORN_CMD_ARGS)."""

import os

bind = os.environ.get("TALLY_BIND", "127.0.0.1:8000")
# Threads, because a POST may wait a few seconds for the worker's announcement.
worker_class = "gthread"
workers = int(os.environ.get("TALLY_API_PROCESSES", "2"))
threads = int(os.environ.get("TALLY_API_THREADS", "16"))
graceful_timeout = 30
timeout = 60
accesslog = "-"
