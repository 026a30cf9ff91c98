"""shared.platform.config: bind addresses and settings read from TALLY_* variables."""

from __future__ import annotations

import pytest

from shared.platform.config import (
    DEFAULT_POINTS_TYPES,
    PointsType,
    Settings,
    host_port,
    load_settings,
)


@pytest.mark.parametrize(
    ("bind", "parsed"),
    [
        ("127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("localhost:9808", ("localhost", 9808)),
        ("[::1]:8000", ("::1", 8000)),
        ("[::]:8000", ("::", 8000)),
        (":8000", ("", 8000)),
    ],
)
def test_host_port(bind: str, parsed: tuple[str, int]) -> None:
    assert host_port(bind) == parsed


@pytest.mark.parametrize("bind", ["127.0.0.1", "host:port", ""])
def test_a_bind_without_a_port_is_an_error(bind: str) -> None:
    with pytest.raises(ValueError):
        host_port(bind)


def test_settings_from_the_environment_keep_their_types() -> None:
    settings = load_settings(
        {
            "TALLY_DATABASE_URL": "postgresql+psycopg://db/x",
            "TALLY_MAX_WAIT": "2.5",
            "TALLY_API_PROCESSES": "3",
            "TALLY_ACCESS_LOG": " Yes ",
            "TALLY_POINTS_TYPES": '{"gems": {"allow_negative": true, "exchange_rate": 5}}',
            "TALLY_UNKNOWN": "ignored",
            "OTHER_MAX_WAIT": "9",
        }
    )
    assert settings.database_url == "postgresql+psycopg://db/x"
    assert settings.max_wait == 2.5 and settings.api_processes == 3
    assert settings.access_log is True
    assert settings.points_types == {"gems": PointsType("gems", True, 5)}
    assert settings.redis_url == Settings().redis_url


def test_no_environment_gives_the_defaults() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.points_types == DEFAULT_POINTS_TYPES
    assert settings.pool_size == settings.api_threads + 4
    assert settings.with_overrides({"db_pool_size": 7}).pool_size == 7


@pytest.mark.parametrize("raw", ["0", "false", "no", "off", ""])
def test_false_flags(raw: str) -> None:
    assert load_settings({"TALLY_ACCESS_LOG": raw}).access_log is False
