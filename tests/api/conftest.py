"""API fixtures: the Flask app on the test services, and its Celery app.

worker, apply_account, sessions, factory and moderator come from tests/conftest.py and use
the `celery_app` defined here (the Flask app's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from shared.intake.adjustments import Adjustment
from shared.platform.config import Settings
from tests.factories import Caller, queue_adjustments
from worker.app import TallyCelery


@pytest.fixture(scope="session")
def flask_app(base_settings: Settings) -> Iterator[Flask]:
    from api import create_app

    app = create_app(base_settings)
    yield app
    app.extensions["tally"].resources.close()


@pytest.fixture(scope="session")
def celery_app(flask_app: Flask) -> TallyCelery:
    celery: TallyCelery = flask_app.extensions["tally"]
    return celery


@pytest.fixture
def award(
    sessions: sessionmaker[Session], apply_account: Callable[[str], int]
) -> Callable[..., None]:
    """Write ledger entries now: record adjustments as `caller`, then apply each account.

    Each account is applied in its own transaction, so its entries share one `reputed_at`.
    """

    def write(caller: Caller, *adjustments: Adjustment) -> None:
        for account_id in queue_adjustments(sessions, caller, adjustments):
            apply_account(account_id)

    return write


@pytest.fixture
def client(flask_app: Flask) -> FlaskClient:
    return flask_app.test_client()


@pytest.fixture
def app_with(base_settings: Settings) -> Iterator[Callable[..., Flask]]:
    """Build extra apps with overridden settings; their connections are closed afterwards."""
    from api import create_app

    apps: list[Flask] = []

    def build(**overrides: object) -> Flask:
        app = create_app(base_settings, **overrides)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["tally"].resources.close()
