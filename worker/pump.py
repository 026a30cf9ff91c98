"""The event pump: threads of each events worker that number the committed events and
hand them on every TALLY_EVENTS_INTERVAL seconds, and stream them to NATS when
TALLY_NATS_URL is set (docs/events.md).

They run in the worker's main process, not as tasks beat sends: beat's sending four
times a second, with the task's trip through Redis and its task events, cost about
80 ms of CPU a second on an idle stack (PERFORMANCE.md). Several events workers may each
run them: the sequencer, the fan-out and the stream each take an advisory lock, so their
passes take turns.

A prefork worker forks its pool's processes from this process, at start and whenever
one is replaced. A fork copies the locks a thread holds at that moment (the database
pool's, Redis's, kombu's) into a child that will wait on them for ever: so the threads
start after the pool, and a fork waits for the passes under way to end (each ticker's
lock, held by its passes and, through os.register_at_fork, by every fork).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from celery import bootsteps

from shared.events import stream
from shared.events.log import number_events
from shared.events.notices import note_crossings, thresholded
from shared.events.webhooks import endpoints_due, fan_out, queue_deliveries
from shared.flow.dispatch import Lane, queue_of
from shared.platform.db import transaction
from shared.platform.metrics import STREAM_EVENTS, STREAM_FAILURES
from worker.app import DELIVER_WEBHOOKS_TASK, TallyCelery

log = logging.getLogger(__name__)

# Each ticker's lock, held by its passes and by a fork (see the module's docstring).
PASS_LOCKS: list[threading.Lock] = []


def _before_fork() -> None:
    for lock in PASS_LOCKS:
        lock.acquire()


def _after_fork() -> None:
    for lock in reversed(PASS_LOCKS):
        lock.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)

# After a failed pass, the wait grows to this (a database that is down is not asked four
# times a second, nor its failure logged as often).
MAX_BACKOFF_SECONDS = 5.0


def pump_events(app: TallyCelery) -> int:
    """Number the events committed since the last pass and hand them on, in one
    transaction: note balance crossings, write the webhook deliveries; then wake the
    feed's long-polls and send a delivery task for each endpoint with a delivery due and
    no task queued (so a lost task is sent again). How many were numbered."""
    resources = app.resources
    points_types = resources.settings.points_types
    with transaction(resources.sessions) as session:
        numbered = number_events(session, thresholded(points_types))
        # Written unnumbered: the next pass numbers them (after the entries they follow).
        note_crossings(session, points_types, numbered.entries)
        fan_out(session)
        due = endpoints_due(session)
    if numbered.count:
        resources.redis.publish(resources.keys.events_channel, json.dumps(sorted(numbered.tenants)))
    queue_deliveries(resources.redis, resources.keys, due, deliver_later(app))
    return numbered.count


def deliver_later(app: TallyCelery) -> Callable[[str], None]:
    """Send a delivery task for an endpoint (worker.tasks.deliver_webhooks)."""
    return lambda endpoint_id: app.send_task(DELIVER_WEBHOOKS_TASK, args=[endpoint_id])


def stream_to_nats(app: TallyCelery) -> int:
    """Publish the numbered events past the cursor "nats" to NATS JetStream; a pass that
    stops short is logged and counted, and NATS is left alone for a while (the next pass
    after that retries from the cursor). How many were published."""
    settings, redis, keys = app.resources.settings, app.resources.redis, app.resources.keys
    if redis.exists(keys.stream_pause):
        return 0
    streamed = stream.stream_events(app.resources.sessions, settings)
    STREAM_EVENTS.inc(streamed.published)
    if streamed.error:
        STREAM_FAILURES.inc()
        redis.set(keys.stream_pause, streamed.position, ex=stream.STREAM_PAUSE_SECONDS)
        log.warning(
            "events past id %d not streamed to NATS: %s",
            streamed.position,
            streamed.error,
            extra={"nats_url": settings.nats_url, "stream": settings.nats_stream},
        )
    return streamed.published


class Ticker:
    """Runs `job` every `interval` seconds on a daemon thread until stopped; a failed
    pass is logged and the wait doubles, up to MAX_BACKOFF_SECONDS."""

    def __init__(self, name: str, interval: float, job: Callable[[], Any]) -> None:
        self.name = name
        self.interval = interval
        self.job = job
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.passing = threading.Lock()

    def start(self) -> None:
        PASS_LOCKS.append(self.passing)
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout)
        if self.passing in PASS_LOCKS:
            PASS_LOCKS.remove(self.passing)

    def _loop(self) -> None:
        wait = self.interval
        while not self.stopping.wait(wait):
            try:
                with self.passing:
                    self.job()
            except Exception:
                wait = min(MAX_BACKOFF_SECONDS, wait * 2)
                log.exception("%s: pass failed; next in %.1f s", self.name, wait)
            else:
                wait = self.interval


class EventPump(bootsteps.StartStopStep):
    """The pump (and the NATS stream) of a worker that consumes the events lane."""

    label = "event pump"
    # Started once the pool has forked its processes.
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tickers: list[Ticker] = []

    def include_if(self, parent: Any) -> bool:
        app = parent.app
        events = queue_of(app.resources.settings.queue_name, Lane.EVENTS)
        return isinstance(app, TallyCelery) and events in app.amqp.queues.consume_from

    def start(self, parent: Any) -> None:
        self.tickers = tickers(parent.app)
        for ticker in self.tickers:
            ticker.start()

    def stop(self, parent: Any) -> None:
        for ticker in self.tickers:
            ticker.stop()

    shutdown = stop


def tickers(app: TallyCelery) -> list[Ticker]:
    """The pump's threads for this app's settings: the pump, and the stream if NATS is set."""
    settings = app.resources.settings
    found = [Ticker("event pump", settings.events_interval, lambda: pump_events(app))]
    if settings.nats_url:
        found.append(Ticker("nats stream", settings.events_interval, lambda: stream_to_nats(app)))
    return found
