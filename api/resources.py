"""Access to this app's connections and Celery publisher from inside a request."""

from __future__ import annotations

import threading

import sqlalchemy.exc
from flask import Flask, current_app, g
from sqlalchemy.orm import Session

from shared.flow.notify import AnnouncementListener, CompletionListener
from shared.intake.auth import TokenCache
from shared.platform.resources import Resources
from worker.app import TallyCelery

EXTENSION = "tally"
WAIT_SLOTS = "tally.wait_slots"
TOKEN_CACHE = "tally.token_cache"
COMPLETIONS = "tally.completions"
EVENT_ANNOUNCEMENTS = "tally.event_announcements"


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


def release_session() -> None:
    """End this request's transaction, if one is open, so its connection goes back to the pool."""
    session: Session | None = g.get("db_session")
    if session is not None:
        session.rollback()


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

    @app.teardown_appcontext
    def _close_session(_: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is None:
            return
        try:
            session.close()
        except sqlalchemy.exc.DBAPIError as error:
            # The answer is already made; a connection PostgreSQL cut must not turn it
            # into a 500. Invalidating hands the broken connection back for discarding.
            current_app.logger.warning("closing a session failed: %s", error)
            session.invalidate()
