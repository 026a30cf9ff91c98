"""TALLY_REDIS_URL: one Redis server, or a master found through Redis Sentinel.

    redis://[:password@]host:port/db                     one server
    redis+sentinel://[:password@]host:port,host:port,.../master[/db]
                                                         the master the sentinels name

The second form is the one `limits` (the rate limits' storage) reads, with a database
number added. Every user of Redis in tally (the client of a process, Celery's broker,
the rate limits) is built from the one parse here, so each follows a failover the same
way: on every new connection it asks the sentinels where the master is now, and a
connection to a demoted master is dropped at its first READONLY answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"
# How a sentinel is asked where the master is: one try, a second to answer. A sentinel
# that is down must cost a second at most before the next is asked; redis-py's default
# (three tries with a backoff of up to ten seconds each) held a worker's reconnection
# for half a minute when the master's host died with the sentinel beside it.
SENTINEL_OPTIONS: dict[str, Any] = {
    "socket_timeout": 1.0,
    "socket_connect_timeout": 1.0,
    "retry": Retry(NoBackoff(), 0),
}


@dataclass(frozen=True)
class RedisTarget:
    url: str
    # (host, port) of each sentinel; empty for a plain redis:// URL.
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        """The target `url` names; ValueError says what is wrong with it."""
        parts = urlsplit(url)
        if parts.scheme != SENTINEL_SCHEME:
            return cls(url)
        hosts = parts.netloc.rpartition("@")[2]
        password = unquote(parts.password) if parts.password else None
        sentinels = []
        for address in hosts.split(","):
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"a sentinel must be host:port, not {address!r}")
            sentinels.append((host, int(port)))
        path = [part for part in parts.path.split("/") if part]
        if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
            raise ValueError(
                f"{SENTINEL_SCHEME}:// needs the master's name and may add a database"
                " number: redis+sentinel://host:26379,host:26379/mymaster/0"
            )
        db = int(path[1]) if len(path) == 2 else 0
        return cls(url, tuple(sentinels), path[0], db, password)

    def client(self, **options: Any) -> Redis:
        """A client (redis-py's options) of the server, or of the master wherever it is."""
        if not self.sentinels:
            return Redis.from_url(self.url, **options)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            self.sentinels, sentinel_kwargs=SENTINEL_OPTIONS
        )
        master: Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            self.master, db=self.db, password=self.password, **options
        )
        return master

    def broker(self) -> tuple[str, dict[str, Any]]:
        """Celery's broker_url and the transport options it needs for this target."""
        if not self.sentinels:
            return self.url, {}
        auth = f":{self.password}@" if self.password else ""
        urls = ";".join(
            f"sentinel://{auth}{host}:{port}/{self.db}" for host, port in self.sentinels
        )
        return urls, {"master_name": self.master, "sentinel_kwargs": SENTINEL_OPTIONS}

    def limits_storage(self) -> tuple[str, dict[str, Any]]:
        """The storage URI and options of the `limits` library for this target."""
        if not self.sentinels:
            return self.url, {}
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        # Counts are read from the master too: a replica's may be behind.
        options: dict[str, Any] = {
            "db": self.db,
            "use_replicas": False,
            "sentinel_kwargs": SENTINEL_OPTIONS,
        }
        if self.password:
            options["password"] = self.password
        return f"{SENTINEL_SCHEME}://{hosts}/{self.master}", options
