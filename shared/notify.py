"""Completion announcements: the workers publish each applied chunk's outcomes on one
Redis channel, and one listener thread per API process wakes the requests waiting there.

An announcement carries what the answer needs (the ledger entry's id, balance and
time, or the rejection), so a waiting request answers 201 or 409 without reading
the database again. One subscription per process, not one per waiting request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import redis.exceptions
from redis import Redis


def done_channel(queue: str) -> str:
    """The channel of one deployment (named after its Celery queue, as the dispatcher's keys)."""
    return f"tally:done:{queue}"


RECONNECT_SECONDS = 0.5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    """A request's final status as the worker announced it."""

    request_id: int
    status: str
    error_code: str | None = None
    error_message: str | None = None
    entry_id: int | None = None
    balance_after: int | None = None
    # ISO 8601 UTC: the ledger entry's created_at.
    reputed_at: str | None = None


def announce(redis: Redis, channel: str, completions: Iterable[Completion]) -> None:
    """Tell the API processes that these requests are final (after the commit)."""
    payload = [asdict(completion) for completion in completions]
    if payload:
        redis.publish(channel, json.dumps(payload, separators=(",", ":")))


class _Slot:
    __slots__ = ("completion", "event")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.completion: Completion | None = None


class CompletionListener:
    """One subscription to the done channel for the whole process; threads wait on it.

    A thread registers its request id after the request is committed, and the worker
    may announce before that: the listener keeps the last `remember` completions it
    saw, and `wait` looks there first. Started on first use (after any fork); when
    Redis goes away it reconnects, and waiters in the meantime simply time out.
    """

    def __init__(self, redis: Callable[[], Redis], channel: str, remember: int = 4096) -> None:
        self._redis = redis
        self._channel = channel
        self._remember = remember
        self._lock = threading.Lock()
        self._waiting: dict[int, _Slot] = {}
        self._recent: OrderedDict[int, Completion] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._subscribed = threading.Event()

    def wait(self, request_id: int, timeout: float) -> Completion | None:
        """The request's completion once announced, or None after `timeout` seconds."""
        self._start()
        with self._lock:
            seen = self._recent.get(request_id)
            if seen is not None:
                return seen
            slot = self._waiting.setdefault(request_id, _Slot())
        try:
            slot.event.wait(timeout)
            return slot.completion
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
            pubsub.subscribe(self._channel)
            while True:
                message = pubsub.get_message(timeout=1.0)
                if pubsub.subscribed:
                    self._subscribed.set()
                if message is not None:
                    self._deliver(json.loads(message["data"]))
        finally:
            pubsub.close()

    def _deliver(self, payload: list[dict[str, Any]]) -> None:
        completions = [Completion(**item) for item in payload]
        with self._lock:
            for completion in completions:
                slot = self._waiting.get(completion.request_id)
                if slot is not None:
                    slot.completion = completion
                    slot.event.set()
                self._recent[completion.request_id] = completion
            while len(self._recent) > self._remember:
                self._recent.popitem(last=False)
