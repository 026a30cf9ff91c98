"""Entry point for `celery -A worker.celery_app`: the app built from the environment."""

from shared.config import load_settings
from worker.app import make_celery

app = make_celery(load_settings())
