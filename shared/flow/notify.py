"""Completion announcements: the workers publish the ids of each applied chunk's requests
on the deployment's channel, and one listener thread per API process wakes the requests
waiting there.

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
from collections.abc import Callable, Iterable

import redis.exceptions
from redis import Redis

RECONNECT_SECONDS = 0.5

log = logging.getLogger(__name__)


def announce(redis: Redis, channel: str, request_ids: Iterable[int]) -> None:
    """Tell the API processes that these requests are final (after the commit)."""
    payload = list(request_ids)
    if payload:
        redis.publish(channel, json.dumps(payload, separators=(",", ":")))


class _Slot:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


class CompletionListener:
    """One subscription to the done channel for the whole process; threads wait on it.

    A thread registers its request id after the request is committed, and the worker
    may announce before that: the listener keeps the last `remember` ids it heard, and
    `wait` looks there first. Started on first use (after any fork; the channel, named
    after the deployment, is asked for then); when Redis goes away it reconnects, and
    waiters in the meantime simply time out.
    """

    def __init__(
        self, redis: Callable[[], Redis], channel: Callable[[], str], remember: int = 4096
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._remember = remember
        self._lock = threading.Lock()
        self._waiting: dict[int, _Slot] = {}
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._subscribed = threading.Event()

    def wait(self, request_id: int, timeout: float, *, heard_before: bool = True) -> bool:
        """Whether the request was announced (heard earlier, unless `heard_before` is False,
        or within `timeout` seconds). Only a hint: the database has the outcome."""
        self._start()
        with self._lock:
            if heard_before and request_id in self._recent:
                return True
            slot = self._waiting.setdefault(request_id, _Slot())
        try:
            return slot.event.wait(timeout)
        finally:
            with self._lock:
                self._waiting.pop(request_id, None)

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="completion-listener", daemon=True
                )
                self._thread.start()
        # The first waiter gives the subscription a moment, so it does not miss its own.
        self._subscribed.wait(1.0)

    def _run(self) -> None:
        while True:
            try:
                self._listen()
            except (redis.exceptions.RedisError, OSError) as error:
                self._subscribed.clear()
                log.warning("completion listener lost Redis (%s); reconnecting", error)
                time.sleep(RECONNECT_SECONDS)
            except Exception:
                # The listener must outlive anything; waiters fall back to the database.
                self._subscribed.clear()
                log.exception("completion listener failed; restarting it")
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
        """Wake the waiters of the ids in a message; anything else on the channel is ignored."""
        try:
            payload = json.loads(data)
        except ValueError:
            return
        if not isinstance(payload, list):
            return
        ids = [item for item in payload if isinstance(item, int)]
        with self._lock:
            for request_id in ids:
                slot = self._waiting.get(request_id)
                if slot is not None:
                    slot.event.set()
                self._recent[request_id] = None
            while len(self._recent) > self._remember:
                self._recent.popitem(last=False)
