"""shared.platform.config: bind addresses and settings read from TALLY_* variables."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import pytest

from shared.platform.config import (
    DEFAULT_POINTS_TYPES,
    DEFAULT_REDIS_URL,
    ConfigurationError,
    PointsType,
    Settings,
    host_port,
    load_settings,
)

Environ = Callable[[dict[str, str]], None]


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


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, str]], None]:
    """Only the given TALLY_* variables in the environment."""
    for name in os.environ:
        if name.startswith("TALLY_"):
            monkeypatch.delenv(name)

    def given(variables: dict[str, str]) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return given


def test_settings_from_the_environment_keep_their_types(environ: Environ) -> None:
    environ(
        {
            "TALLY_DATABASE_URL": "postgresql+psycopg://db/x",
            "TALLY_MAX_WAIT": "2.5",
            "TALLY_API_PROCESSES": "3",
            "TALLY_ACCESS_LOG": " Yes ",
            "TALLY_POINTS_TYPES": '{"gems": {"allow_negative": true, "exchange_rate": 5}}',
            "OTHER_MAX_WAIT": "9",
        }
    )
    settings = load_settings()
    assert settings.database_url == "postgresql+psycopg://db/x"
    assert settings.max_wait == 2.5 and settings.api_processes == 3
    assert settings.access_log is True
    assert settings.points_types == {"gems": PointsType("gems", True, 5)}
    assert settings.redis_url == DEFAULT_REDIS_URL


def test_no_environment_gives_the_defaults(environ: Environ) -> None:
    settings = load_settings()
    assert settings == Settings()
    assert settings.points_types == DEFAULT_POINTS_TYPES
    assert settings.pool_size == settings.api_threads + 4
    assert settings.with_overrides({"db_pool_size": 7}).pool_size == 7
    with pytest.raises(TypeError, match="db_pool_sise"):
        settings.with_overrides({"db_pool_sise": 7})


@pytest.mark.parametrize("raw", ["0", "false", "No", " off "])
def test_false_flags(environ: Environ, raw: str) -> None:
    environ({"TALLY_ACCESS_LOG": raw})
    assert load_settings().access_log is False


@pytest.mark.parametrize(
    ("variable", "raw", "reason"),
    [
        ("TALLY_MAX_WAIT", "5s", "valid number"),
        ("TALLY_API_THREADS", "1.5", "valid integer"),
        ("TALLY_ACCESS_LOG", "maybe", "valid boolean"),
        ("TALLY_ACCESS_LOG", "", "valid boolean"),
        ("TALLY_POINTS_TYPES", "{gems", "double quotes"),
        ("TALLY_POINTS_TYPES", '{"gems": {"cap": {"amount": 0}}}', "amount > 0"),
    ],
)
def test_a_bad_value_names_its_variable(
    environ: Environ, variable: str, raw: str, reason: str
) -> None:
    """Before pydantic-settings, `maybe` was a false flag and `5s` a traceback from float()."""
    environ({variable: raw, "TALLY_MAX_WAITERS": "3"})
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert str(raised.value).startswith(f"{variable}: ")
    assert reason in str(raised.value) and repr(raw) in str(raised.value)
    assert "TALLY_MAX_WAITERS" not in str(raised.value)


def test_every_bad_value_is_named_at_once(environ: Environ) -> None:
    environ({"TALLY_MAX_WAIT": "x", "TALLY_LOCK_TTL": "y"})
    with pytest.raises(ConfigurationError, match=r"TALLY_MAX_WAIT: .*; TALLY_LOCK_TTL: "):
        load_settings()


def test_an_unknown_variable_is_warned_about_once(
    environ: Environ, caplog: pytest.LogCaptureFixture
) -> None:
    environ(
        {
            "TALLY_MAX_WIAT": "3",
            "TALLY_FROBNICATE": "1",
            # The CLI's own, and the test suite's, are not settings but are not typos.
            "TALLY_URL": "http://127.0.0.1:8000",
            "TALLY_TEST_REDIS_URL": "redis://",
        }
    )
    with caplog.at_level(logging.WARNING, logger="shared.platform.config"):
        settings = load_settings()
        load_settings()
    assert settings.max_wait == Settings.model_fields["max_wait"].default
    assert caplog.messages == [
        "TALLY_FROBNICATE is not a tally setting and is ignored",
        "TALLY_MAX_WIAT is not a tally setting and is ignored; did you mean TALLY_MAX_WAIT?",
    ]
