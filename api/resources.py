"""Access to this app's connections and Celery publisher from inside a request."""

from __future__ import annotations

import math
import threading

import sqlalchemy.exc
from flask import Flask, Response, current_app, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from shared.flow.notify import AnnouncementListener, CompletionListener
from shared.intake.auth import TokenCache
from shared.platform.db import end_unwritten
from shared.platform.replicas import ReadTarget
from shared.platform.resources import Resources
from worker.app import TallyCelery

EXTENSION = "tally"
WAIT_SLOTS = "tally.wait_slots"
TOKEN_CACHE = "tally.token_cache"
COMPLETIONS = "tally.completions"
EVENT_ANNOUNCEMENTS = "tally.event_announcements"
# On an answer read from a replica, or from the primary while replicas are configured:
# seconds behind the primary its data may be (0.0 from the primary).
STALENESS_HEADER = "Tally-Staleness"


def resources() -> Resources:
    celery: TallyCelery = current_app.extensions[EXTENSION]
    return celery.resources


def publisher() -> TallyCelery:
    celery: TallyCelery = current_app.extensions[EXTENSION]
    return celery


def db_session() -> Session:
    """This request's session: auth and the view share one transaction."""
    if "db_session" not in g:
        g.db_session = resources().sessions()
    session: Session = g.db_session
    return session


def read_engine() -> Engine:
    """Where a route that only reads, deciding nothing, reads: a read replica within
    TALLY_READ_MAX_LAG when replicas are configured (the answer's Tally-Staleness header
    says how many seconds behind the primary it may be), else the primary."""
    replicas = resources().read_replicas
    if replicas is None:
        return resources().engine
    if "read_target" not in g:
        g.read_target = replicas.choose()
    target: ReadTarget = g.read_target
    return target.engine


def read_session() -> Session:
    """A session on read_engine(): this request's own when that is the primary."""
    engine = read_engine()
    if engine is resources().engine:
        return db_session()
    if "read_session" not in g:
        g.read_session = Session(engine)
    session: Session = g.read_session
    return session


def release_session() -> None:
    """End this request's transaction, if one is open, so its connection goes back to the
    pool: what it did not commit is not kept."""
    session: Session | None = g.get("db_session")
    if session is not None:
        end_unwritten(session)


def wait_slots() -> threading.BoundedSemaphore:
    """The places for requests of this process that may wait for the worker at once."""
    slots: threading.BoundedSemaphore = current_app.extensions[WAIT_SLOTS]
    return slots


def token_cache() -> TokenCache:
    cache: TokenCache = current_app.extensions[TOKEN_CACHE]
    return cache


def completions() -> CompletionListener:
    """This process's one subscription to the workers' completion announcements."""
    listener: CompletionListener = current_app.extensions[COMPLETIONS]
    return listener


def event_announcements() -> AnnouncementListener[str]:
    """This process's one subscription to the events pump's wake-ups, by tenant."""
    listener: AnnouncementListener[str] = current_app.extensions[EVENT_ANNOUNCEMENTS]
    return listener


def init_app(app: Flask, celery: TallyCelery) -> None:
    app.extensions[EXTENSION] = celery
    settings = celery.resources.settings
    # The engine is built on first use, after the server forked this process.
    app.extensions[TOKEN_CACHE] = TokenCache(
        lambda: celery.resources.engine, ttl=settings.token_cache_seconds
    )
    app.extensions[WAIT_SLOTS] = threading.BoundedSemaphore(settings.max_waiters)
    app.extensions[COMPLETIONS] = CompletionListener(
        lambda: celery.resources.redis,
        lambda: celery.resources.keys.done_channel(settings.queue_name),
    )
    # A feed's long-poll registers before it reads, so it needs no memory of past wake-ups.
    app.extensions[EVENT_ANNOUNCEMENTS] = AnnouncementListener(
        lambda: celery.resources.redis,
        lambda: celery.resources.keys.events_channel,
        str,
        remember=0,
        name="events-listener",
    )

    @app.after_request
    def _say_how_fresh(response: Response) -> Response:
        target: ReadTarget | None = g.get("read_target")
        if target is not None:
            # An upper bound, in tenths of a second.
            response.headers[STALENESS_HEADER] = f"{math.ceil(target.lag * 10) / 10:.1f}"
        return response

    @app.teardown_appcontext
    def _close_sessions(_: BaseException | None) -> None:
        for name in ("db_session", "read_session"):
            session = g.pop(name, None)
            if session is None:
                continue
            try:
                end_unwritten(session)
                session.close()
            except sqlalchemy.exc.DBAPIError as error:
                # The answer is already made; a connection PostgreSQL cut must not turn it
                # into a 500. Invalidating hands the broken connection back for discarding.
                current_app.logger.warning("closing a session failed: %s", error)
                session.invalidate()
