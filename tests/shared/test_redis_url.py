"""TALLY_REDIS_URL: one server, or a master named by sentinels (shared.platform.redis_url)."""

from __future__ import annotations

import pytest

from shared.platform.config import ConfigurationError, Settings
from shared.platform.redis_url import RedisTarget
from tests.conftest import Services


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    target = RedisTarget.parse("redis+sentinel://:s3cret@10.0.0.1:26379,sentinel-b:26380/tally/3")
    assert target.sentinels == (("10.0.0.1", 26379), ("sentinel-b", 26380))
    assert (target.master, target.db, target.password) == ("tally", 3, "s3cret")
    broker, options = target.broker()
    assert broker == "sentinel://:s3cret@10.0.0.1:26379/3;sentinel://:s3cret@sentinel-b:26380/3"
    assert options["master_name"] == "tally"
    uri, limits = target.limits_storage()
    assert uri == "redis+sentinel://10.0.0.1:26379,sentinel-b:26380/tally"
    assert (limits["db"], limits["password"], limits["use_replicas"]) == (3, "s3cret", False)


def test_the_database_number_is_optional() -> None:
    assert RedisTarget.parse("redis+sentinel://a:26379/tally").db == 0


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://a:26379/", "master's name"),
        ("redis+sentinel://a:26379/tally/zero", "master's name"),
        ("redis+sentinel://a/tally", "host:port"),
        ("redis+sentinel://a:26379,:1/tally", "host:port"),
    ],
)
def test_a_bad_sentinel_url_is_a_configuration_error(
    url: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALLY_REDIS_URL", url)
    with pytest.raises(ConfigurationError) as error:
        from shared.platform.config import load_settings

        load_settings()
    assert "TALLY_REDIS_URL" in str(error.value) and says in str(error.value)


def test_a_plain_url_is_one_server(services: Services) -> None:
    target = Settings(redis_url=services.redis_url).redis
    assert target.sentinels == ()
    assert target.broker() == (services.redis_url, {})
    client = target.client(socket_timeout=1)
    try:
        assert client.ping()
    finally:
        client.close()
