"""Entry point for `celery -A worker.celery_app`: the app built from the environment."""

from celery.signals import setup_logging

from shared.platform.config import load_settings
from shared.platform.logs import configure_logging
from worker import metrics  # noqa: F401  (a worker serves its own /metrics)
from worker.app import make_celery
from worker.pump import EventPump

app = make_celery(load_settings())
# A worker that consumes the events lane numbers and hands on events (worker.pump).
app.steps["worker"].add(EventPump)


@setup_logging.connect
def _json_logs(**_: object) -> None:
    configure_logging("worker")
