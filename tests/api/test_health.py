"""GET /healthz and /readyz: 503 naming what is wrong."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from unittest import mock

import psycopg
import pytest
from alembic.script import ScriptDirectory
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import make_url

from cli.embedded import free_port
from tests.conftest import Services


def test_healthz_and_readyz_when_all_is_well(client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json["checks"] == {"database": "ok", "schema": "ok", "redis": "ok"}


def test_readyz_is_cheap_and_quiet(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    """An unauthenticated probe hit often: the migration scripts are read at most once per
    process, and Alembic logs nothing per call."""
    caplog.set_level(logging.INFO, logger="alembic")
    loads = mock.patch.object(ScriptDirectory, "from_config", wraps=ScriptDirectory.from_config)
    with loads as from_config:
        for _ in range(50):
            assert client.get("/readyz").status_code == 200
    assert from_config.call_count <= 1
    assert [r.getMessage() for r in caplog.records if r.name.startswith("alembic")] == []


def test_readyz_is_503_when_redis_is_unreachable(app_with: Callable[..., Flask]) -> None:
    client = app_with(redis_url=f"redis://127.0.0.1:{free_port()}/0").test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json["checks"]["redis"].startswith("unreachable")
    assert response.json["checks"]["database"] == "ok"
    assert "redis" in response.json["detail"]


@pytest.fixture
def unmigrated_database(services: Services) -> Iterator[str]:
    url = make_url(services.database_url)
    name = url.database + "_unmigrated"
    libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield url.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_readyz_is_503_when_the_schema_is_behind(
    app_with: Callable[..., Flask], unmigrated_database: str
) -> None:
    client = app_with(database_url=unmigrated_database).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "code expects" in response.json["checks"]["schema"]
    assert response.json["checks"]["redis"] == "ok"


def test_readyz_is_503_when_the_database_is_unreachable(app_with: Callable[..., Flask]) -> None:
    client = app_with(
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"
    ).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json["checks"]["database"].startswith("unreachable")
