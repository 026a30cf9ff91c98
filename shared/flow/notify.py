"""Announcements: the workers publish the ids of each applied chunk's requests on the
deployment's done channel (and the events pump the tenants with new events on its events
channel), and one listener thread per API process and channel wakes the requests waiting
there.

An announcement is only a wake-up: the woken request reads its outcome from the
database, so nothing that arrives through Redis (a lost, late, repeated or forged
message) can decide an answer. One subscription per process, not one per waiting
request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import redis.exceptions
from redis import Redis

RECONNECT_SECONDS = 0.5
K = TypeVar("K", int, str)

log = logging.getLogger(__name__)


def announce(redis: Redis, channel: str, request_ids: Iterable[int]) -> None:
    """Tell the API processes that these requests are final (after the commit)."""
    payload = list(request_ids)
    if payload:
        redis.publish(channel, json.dumps(payload, separators=(",", ":")))


class AnnouncementListener(Generic[K]):
    """One subscription to a channel of JSON lists of keys (of type `kind`) for the whole
    process; threads wait on it for a key.

    A thread may register after the key was announced (a request id announced before
    its thread got round to waiting): the listener keeps the last `remember` keys it
    heard, and `wait` looks there first. A thread that reads the database and then
    waits registers first with `expecting`, so that nothing announced in between is
    missed. Started on first use (after any fork; the channel, named after the
    deployment, is asked for then); when Redis goes away it reconnects, and waiters in
    the meantime simply time out.
    """

    def __init__(
        self,
        redis: Callable[[], Redis],
        channel: Callable[[], str],
        kind: type[K],
        remember: int = 4096,
        name: str = "announcement-listener",
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._kind: type[K] = kind
        self._remember = remember
        self._name = name
        self._lock = threading.Lock()
        self._waiting: dict[K, set[threading.Event]] = {}
        self._recent: OrderedDict[K, None] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._subscribed = threading.Event()

    def wait(self, key: K, timeout: float, *, heard_before: bool = True) -> bool:
        """Whether the key was announced (heard earlier, unless `heard_before` is False,
        or within `timeout` seconds). Only a hint: the database has the outcome."""
        with self.expecting(key) as announced:
            with self._lock:
                if heard_before and key in self._recent:
                    return True
            return announced.wait(timeout)

    @contextmanager
    def expecting(self, key: K) -> Iterator[threading.Event]:
        """An event set by the next announcement of `key` from now on (wait on it later)."""
        self._start()
        announced = threading.Event()
        with self._lock:
            self._waiting.setdefault(key, set()).add(announced)
        try:
            yield announced
        finally:
            with self._lock:
                waiters = self._waiting.get(key, set())
                waiters.discard(announced)
                if not waiters:
                    self._waiting.pop(key, None)

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        # The first waiter gives the subscription a moment, so it does not miss its own.
        self._subscribed.wait(1.0)

    def _run(self) -> None:
        while True:
            try:
                self._listen()
            except (redis.exceptions.RedisError, OSError) as error:
                self._subscribed.clear()
                log.warning("%s lost Redis (%s); reconnecting", self._name, error)
                time.sleep(RECONNECT_SECONDS)
            except Exception:
                # The listener must outlive anything; waiters fall back to the database.
                self._subscribed.clear()
                log.exception("%s failed; restarting it", self._name)
                time.sleep(RECONNECT_SECONDS)

    def _listen(self) -> None:
        pubsub = self._redis().pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(self._channel())
            while True:
                message = pubsub.get_message(timeout=1.0)
                if pubsub.subscribed:
                    self._subscribed.set()
                if message is not None:
                    self._deliver(message["data"])
        finally:
            pubsub.close()

    def _deliver(self, data: bytes) -> None:
        """Wake the waiters of the keys in a message; anything else on the channel is ignored."""
        try:
            payload = json.loads(data)
        except ValueError:
            return
        if not isinstance(payload, list):
            return
        keys = [item for item in payload if type(item) is self._kind]
        with self._lock:
            for key in keys:
                for announced in self._waiting.get(key, ()):
                    announced.set()
                self._recent[key] = None
            while len(self._recent) > self._remember:
                self._recent.popitem(last=False)


class CompletionListener(AnnouncementListener[int]):
    """The done channel's listener: request ids, announced once each is final."""

    def __init__(
        self, redis: Callable[[], Redis], channel: Callable[[], str], remember: int = 4096
    ) -> None:
        super().__init__(redis, channel, int, remember, name="completion-listener")
