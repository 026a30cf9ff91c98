"""The event tests use the API's Flask and Celery apps (tests/api) and their fixtures."""

from tests.api.conftest import app_with, award, celery_app, client, flask_app  # noqa: F401
