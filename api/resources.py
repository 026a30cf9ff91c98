"""Access to this app's connections and Celery publisher from inside a request."""

from __future__ import annotations

from flask import current_app

from shared.resources import Resources
from worker.app import TallyCelery

EXTENSION = "tally"


def resources() -> Resources:
    celery: TallyCelery = current_app.extensions[EXTENSION]
    return celery.resources


def publisher() -> TallyCelery:
    celery: TallyCelery = current_app.extensions[EXTENSION]
    return celery
