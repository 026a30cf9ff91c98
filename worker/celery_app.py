"""Entry point for `celery -A worker.celery_app`: the app built from the environment."""

from celery.signals import setup_logging

from shared.platform.config import load_settings
from shared.platform.logs import configure_logging
from worker import metrics  # noqa: F401  (a worker serves its own /metrics)
from worker.app import make_celery

app = make_celery(load_settings())


@setup_logging.connect
def _json_logs(**_: object) -> None:
    configure_logging("worker")
