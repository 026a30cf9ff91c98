"""The event log's stream to NATS JetStream: numbered events past the cursor "nats" are
published in id order, and the cursor moves past the events NATS acknowledged.

At least once, without duplicates inside the broker's window: each message carries
`Nats-Msg-Id` = the event's id, so an event published again (its ack was lost, the
cursor's commit failed) is dropped by JetStream. A run that stops short (NATS down, an
event not acknowledged) advances the cursor to the last event before the first one
unacknowledged, never past it, and the next run publishes again from there: an account's
events reach the stream in their order. docs/events.md, "Stream (NATS JetStream)".
"""

from __future__ import annotations

import asyncio
import json
import logging
import string
import time
from dataclasses import dataclass

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from shared.events.log import (
    STREAM_LOCK,
    Event,
    advance_cursor,
    cursor_position,
    event_document,
    read_events,
)
from shared.platform.config import Settings
from shared.platform.db import transaction

log = logging.getLogger(__name__)

STREAM_CURSOR = "nats"
# Events read and published per transaction, all before their acks are awaited.
PUBLISH_BATCH = 1000
# The events lane shares its worker processes with single adjustments (Procfile), so a
# run is short: it keeps its connection for more batches until caught up or this many
# seconds pass, and a NATS that does not answer costs a run a few seconds at most.
STREAM_SECONDS = 1.0
ACK_TIMEOUT = 3.0
CONNECT_TIMEOUT = 1
# After a run stopped short, the task lets this many seconds pass before the next one.
STREAM_PAUSE_SECONDS = 5
# JetStream drops a message whose Nats-Msg-Id it stored this recently. A republish
# follows a lost ack by one run (TALLY_EVENTS_INTERVAL); a longer outage of PostgreSQL
# between the publish and the cursor's commit can leave a duplicate, which consumers
# drop by `id` (docs/events.md).
DUPLICATE_WINDOW = 300.0
# NATS failures end a run early; PostgreSQL's errors are the task's.
NATS_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)
# Bytes a tenant id keeps in its subject token; any other byte is written %XX.
SUBJECT_SAFE = frozenset((string.ascii_letters + string.digits + "_-").encode())


def subject_token(value: str) -> str:
    """`value` as one subject token: each UTF-8 byte outside A-Z a-z 0-9 _ - as %XX
    (uppercase hex), so "a.b" is "a%2Eb" and distinct tenants never share a subject."""
    return "".join(chr(byte) if byte in SUBJECT_SAFE else f"%{byte:02X}" for byte in value.encode())


def event_subject(prefix: str, event: Event) -> str:
    """`<prefix>.<tenant>.<type>`; a type's own dots make tokens ("entry.created")."""
    return f"{prefix}.{subject_token(event.tenant_id)}.{event.type}"


def stream_config(settings: Settings) -> StreamConfig:
    """The stream tally creates when none exists: file storage, every subject under the
    prefix, kept as long as the event log keeps events."""
    return StreamConfig(
        name=settings.nats_stream,
        subjects=[f"{settings.nats_subject_prefix}.>"],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW,
        max_age=settings.events_retention_days * 86_400.0,
    )


@dataclass(frozen=True)
class Published:
    """A batch's outcome: how many of its events, from the first, NATS acknowledged, the
    duplicates among them, and why the rest were not."""

    acked: int
    duplicates: int
    error: str | None


@dataclass(frozen=True)
class Streamed:
    """A run's outcome: events acknowledged (duplicates included), the cursor after it,
    and why it stopped short (None: caught up, or out of time)."""

    published: int
    duplicates: int
    position: int
    error: str | None = None


async def publish_batch(js: JetStreamContext, settings: Settings, events: list[Event]) -> Published:
    """Publish the events in order, each before any ack is awaited, then await the acks."""
    acks: list[asyncio.Future[PubAck]] = []
    error: str | None = None
    try:
        for event in events:
            body = json.dumps(event_document(event), separators=(",", ":")).encode()
            acks.append(
                await js.publish_async(
                    event_subject(settings.nats_subject_prefix, event),
                    body,
                    stream=settings.nats_stream,
                    headers={"Nats-Msg-Id": str(event.id)},
                )
            )
    except NATS_ERRORS as failure:
        error = f"publish failed: {failure!r}"
    if acks:
        _, late = await asyncio.wait(acks, timeout=ACK_TIMEOUT)
        for ack in late:
            ack.cancel()
    acked = duplicates = 0
    for ack in acks:
        if ack.cancelled():
            return Published(acked, duplicates, f"no ack within {ACK_TIMEOUT:g}s")
        if (refusal := ack.exception()) is not None:
            return Published(acked, duplicates, f"not acknowledged: {refusal!r}")
        acked += 1
        duplicates += bool(ack.result().duplicate)
    return Published(acked, duplicates, error)


async def connect(settings: Settings) -> tuple[Client, JetStreamContext]:
    """A connection for one run (no reconnecting: the next run connects again), and the
    stream, created if missing; an existing stream is left as its operator set it."""

    async def note_error(error: Exception) -> None:
        # nats-py 2.16 raises a refused publish's error in its reply handler instead of
        # setting it on the ack's future (which then times out): this is where it shows.
        if isinstance(error, APIError):
            log.warning("nats refused a message: %s", error)
        else:
            log.debug("nats: %r", error)

    # nats-py retries a first connect per max_reconnect_attempts (0 is "forever"), then
    # raises NoServersError: two tries, each within CONNECT_TIMEOUT.
    client = await nats.connect(
        settings.nats_url,
        connect_timeout=CONNECT_TIMEOUT,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        reconnect_time_wait=0,
        error_cb=note_error,
        name="tally-stream",
    )
    try:
        js = client.jetstream(timeout=ACK_TIMEOUT)
        try:
            await js.stream_info(settings.nats_stream)
        except NotFoundError:
            await js.add_stream(stream_config(settings))
    except BaseException:
        await client.close()
        raise
    return client, js


def stream_events(
    sessions: sessionmaker[Session],
    settings: Settings,
    *,
    cursor: str = STREAM_CURSOR,
    batch: int = PUBLISH_BATCH,
    seconds: float = STREAM_SECONDS,
) -> Streamed:
    """Publish the numbered events past `cursor` to NATS, batch by batch, advancing the
    cursor after each batch's acks, until caught up, stopped short or out of time."""
    # A loop and a connection per run: nats-py binds a connection to its event loop, and a
    # Celery task is synchronous; a per-process connection would need a loop thread that
    # outlives tasks and forks. We connect only when there is something to publish, and
    # one run carries batches for up to `seconds`, so a busy log shares a connection.
    deadline = time.monotonic() + seconds
    published = duplicates = 0
    with asyncio.Runner() as runner:
        nats_link: tuple[Client, JetStreamContext] | None = None
        try:
            while True:
                with transaction(sessions) as session:
                    lock = "SELECT pg_try_advisory_xact_lock(:key)"
                    if not session.execute(text(lock), {"key": STREAM_LOCK}).scalar():
                        return Streamed(published, duplicates, cursor_position(session, cursor))
                    position = cursor_position(session, cursor)
                    events = read_events(session, None, position, batch)
                    if not events:
                        return Streamed(published, duplicates, position)
                    try:
                        nats_link = nats_link or runner.run(connect(settings))
                    except NATS_ERRORS as failure:
                        return Streamed(published, duplicates, position, f"{failure!r}")
                    outcome = runner.run(publish_batch(nats_link[1], settings, events))
                    if outcome.acked:
                        position = events[outcome.acked - 1].id
                        advance_cursor(session, cursor, position)
                published += outcome.acked
                duplicates += outcome.duplicates
                if outcome.error or len(events) < batch or time.monotonic() > deadline:
                    return Streamed(published, duplicates, position, outcome.error)
        finally:
            if nats_link is not None:
                runner.run(_close(nats_link[0]))


async def _close(client: Client) -> None:
    try:
        await client.close()
    except NATS_ERRORS as error:
        log.debug("nats: closing: %r", error)
