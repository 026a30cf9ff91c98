"""The event log's stream to NATS JetStream, against a real nats-server this module starts
(and stops and restarts on the same store) and a database of each test's own, so that
the global cursor "nats" and the stream hold only the test's events.

nats-server must be installed (`make tools`: the Debian package nats-server); without
it these tests fail, they are never skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from flask import Flask
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY
from sqlalchemy.orm import Session, sessionmaker

from cli.embedded import free_port
from shared.events.log import (
    Event,
    cursor_position,
    event_document,
    number_events,
    read_events,
    write_events,
)
from shared.events.stream import (
    STREAM_CURSOR,
    STREAM_PAUSE_SECONDS,
    Streamed,
    stream_config,
    stream_events,
)
from shared.events.stream import subject_token as token
from shared.platform.config import Settings
from shared.platform.db import transaction
from tests.factories import Caller, Factory, queue_requests
from worker.app import TallyCelery, make_celery
from worker.pump import stream_to_nats, tickers

STARTUP_TIMEOUT = 20.0
STREAM = "TALLY_TEST_EVENTS"
PREFIX = "tally.test"


def _nats_server_binary() -> str:
    found = shutil.which("nats-server") or next(
        (path for path in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if Path(path).exists()),
        None,
    )
    if found is None:
        pytest.fail(
            "nats-server is not installed: the stream tests need a real one "
            "(`make tools` installs the Debian package nats-server)",
            pytrace=False,
        )
    return found


async def connect_to(url: str) -> Client:
    """A test's own connection; a server not (yet) up is an exception, not an error log."""

    async def quiet(error: Exception) -> None:
        pass

    return await nats.connect(
        url,
        connect_timeout=1,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        reconnect_time_wait=0,
        error_cb=quiet,
    )


class NatsServer:
    """A nats-server with JetStream on a spare port, its store in `folder`: stopped and
    started again, it keeps its streams."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            self.binary,
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.folder),
        ]
        log = (self.folder / "server.log").open("ab")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not asyncio.run(self._jetstream_answers()):
            assert self.process.poll() is None, f"nats-server exited: {self._log_tail()}"
            assert time.monotonic() < deadline, f"nats-server not ready: {self._log_tail()}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=STARTUP_TIMEOUT)
            self.process = None

    async def _jetstream_answers(self) -> bool:
        try:
            client = await connect_to(self.url)
        except (nats.errors.Error, OSError):
            return False
        try:
            await client.jetstream().account_info()
            return True
        except nats.errors.Error:
            return False
        finally:
            await client.close()

    def _log_tail(self) -> str:
        return (self.folder / "server.log").read_text(errors="replace")[-2000:]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(_nats_server_binary(), tmp_path / "nats")
    server.folder.mkdir()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def celery_app(
    own_database: str, nats_server: NatsServer, app_with: Callable[..., Flask]
) -> TallyCelery:
    """The Celery app on this test's own database, streaming to this test's nats-server
    (sessions, factory, moderator and apply_account use it)."""
    app = app_with(
        database_url=own_database,
        nats_url=nats_server.url,
        nats_stream=STREAM,
        nats_subject_prefix=PREFIX,
    )
    celery: TallyCelery = app.extensions["tally"]
    return celery


@pytest.fixture
def settings(celery_app: TallyCelery) -> Settings:
    return celery_app.resources.settings


@dataclass(frozen=True)
class Message:
    seq: int
    subject: str
    msg_id: str | None
    document: dict[str, Any]


def read_stream(
    url: str, start: int = 1, durable: str | None = None, count: int | None = None
) -> list[Message]:
    """What a JetStream pull consumer reads and acks: from stream sequence `start` (a new
    consumer), or where the durable `durable` left off; `count` messages, or all there are."""

    async def read() -> list[Message]:
        client = await connect_to(url)
        try:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
            )
            js = client.jetstream()
            subscription = await js.pull_subscribe(
                f"{PREFIX}.>", durable=durable, stream=STREAM, config=config
            )
            messages: list[Message] = []
            while count is None or len(messages) < count:
                wanted = 100 if count is None else count - len(messages)
                try:
                    fetched = await subscription.fetch(wanted, timeout=1)
                except TimeoutError:
                    # nats-py's own TimeoutError, or asyncio's (that is, the builtin's) when
                    # the answer to its first, no-wait pull came in after the timeout.
                    break
                for msg in fetched:
                    headers = msg.headers or {}
                    seq = msg.metadata.sequence.stream
                    messages.append(
                        Message(seq, msg.subject, headers.get("Nats-Msg-Id"), json.loads(msg.data))
                    )
                    await msg.ack_sync()
            return messages
        finally:
            await client.close()

    return asyncio.run(read())


def stream_state(url: str) -> tuple[int, int, int]:
    """(messages, first sequence, last sequence) of the stream."""

    async def state() -> tuple[int, int, int]:
        client = await connect_to(url)
        try:
            info = await client.jetstream().stream_info(STREAM)
            return info.state.messages, info.state.first_seq, info.state.last_seq
        finally:
            await client.close()

    return asyncio.run(state())


def write_raw(
    sessions: sessionmaker[Session], tenant: str, account: str | None, count: int, first: int = 0
) -> None:
    """`count` events of one account (or tenant-wide), numbered at once."""
    with transaction(sessions) as session:
        write_events(
            session,
            [(tenant, account, "lot.expiring", {"n": first + n}) for n in range(count)],
        )
    with transaction(sessions) as session:
        number_events(session)


def run_task(app: TallyCelery) -> int:
    """One pass of the events worker's stream thread (worker.pump), on `app`."""
    return stream_to_nats(app)


def logged_events(sessions: sessionmaker[Session]) -> list[Event]:
    with sessions() as session:
        return read_events(session, None, 0, 100_000)


def documents(events: list[Event]) -> list[dict[str, Any]]:
    # Through JSON, as a consumer decodes them.
    return [json.loads(json.dumps(event_document(event))) for event in events]


def position(sessions: sessionmaker[Session], cursor: str = STREAM_CURSOR) -> int:
    with sessions() as session:
        return cursor_position(session, cursor)


def test_every_event_reaches_the_stream_once_in_id_order_with_its_subject_and_id(
    sessions: sessionmaker[Session],
    settings: Settings,
    nats_server: NatsServer,
    factory: Factory,
    moderator: Caller,
    apply_account: Callable[[str], int],
) -> None:
    # Real changes of one tenant, and tenant-wide and account events of a tenant whose id
    # is no subject token as it stands.
    for amounts in ([5, -2], [7]):
        account, _ = queue_requests(sessions, moderator, factory.user().id, amounts)
        apply_account(account)
    write_raw(sessions, "acme.eu west*", None, 2)
    write_raw(sessions, "acme.eu west*", "01JDACCOUNT000000000000000", 3)
    events = logged_events(sessions)
    assert len(events) >= 12 and [e.id for e in events] == list(range(1, len(events) + 1))

    streamed = stream_events(sessions, settings, batch=4)

    assert streamed == Streamed(len(events), 0, events[-1].id)
    assert position(sessions) == events[-1].id
    messages = read_stream(nats_server.url)
    assert [m.document for m in messages] == documents(events)
    assert [m.seq for m in messages] == list(range(1, len(events) + 1))
    assert [m.msg_id for m in messages] == [str(e.id) for e in events]
    tokens = {factory.tenant_id: factory.tenant_id, "acme.eu west*": "acme%2Eeu%20west%2A"}
    assert [m.subject for m in messages] == [
        f"{PREFIX}.{tokens[e.tenant_id]}.{e.type}" for e in events
    ]
    types = {m.subject.removeprefix(f"{PREFIX}.{factory.tenant_id}.") for m in messages}
    assert {"request.accepted", "entry.created", "request.applied"} <= types
    # Caught up: the next run publishes nothing, and does not even connect.
    nats_server.stop()
    assert stream_events(sessions, settings) == Streamed(0, 0, events[-1].id)


def test_the_first_run_makes_the_stream(
    sessions: sessionmaker[Session], settings: Settings, nats_server: NatsServer
) -> None:
    async def config() -> StreamConfig:
        client = await connect_to(nats_server.url)
        try:
            return (await client.jetstream().stream_info(STREAM)).config
        finally:
            await client.close()

    write_raw(sessions, "default", None, 1)
    assert stream_events(sessions, settings).published == 1

    made = asyncio.run(config())
    assert made.subjects == [f"{PREFIX}.>"] and made.storage == StorageType.FILE
    assert made.duplicate_window is not None and made.duplicate_window >= 120
    assert made.max_age == settings.events_retention_days * 86_400


def test_publishing_a_range_again_leaves_one_copy(
    sessions: sessionmaker[Session], settings: Settings, nats_server: NatsServer
) -> None:
    write_raw(sessions, "default", "01JDACCOUNTAAAAAAAAAAAAAAA", 30)
    first = stream_events(sessions, settings, batch=7)
    assert (first.published, first.duplicates, first.position) == (30, 0, 30)

    # Another cursor from 0: every event published again, inside the duplicate window.
    again = stream_events(sessions, settings, cursor="nats-again", batch=7)

    assert (again.published, again.duplicates, again.error) == (30, 30, None)
    assert stream_state(nats_server.url) == (30, 1, 30)
    messages = read_stream(nats_server.url)
    assert [m.document["id"] for m in messages] == list(range(1, 31))


def test_a_run_stops_at_the_first_event_nats_refuses_and_the_next_goes_on_from_it(
    sessions: sessionmaker[Session],
    settings: Settings,
    nats_server: NatsServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An operator's stream that takes 8 messages and refuses more: the 9th is refused,
    # the events after it in the same batch too.
    async def make_stream(**limits: Any) -> None:
        client = await connect_to(nats_server.url)
        try:
            js = client.jetstream()
            config = stream_config(settings)
            try:
                await js.stream_info(STREAM)
                await js.update_stream(config, **limits)
            except NotFoundError:
                await js.add_stream(config, **limits)
        finally:
            await client.close()

    asyncio.run(make_stream(max_msgs=8, discard=DiscardPolicy.NEW))
    write_raw(sessions, "default", "01JDACCOUNTBBBBBBBBBBBBBBB", 12)

    with caplog.at_level(logging.WARNING, logger="shared.events.stream"):
        stopped = stream_events(sessions, settings, batch=5)

    assert (stopped.published, stopped.position) == (8, 8)
    assert stopped.error is not None
    assert any("maximum messages exceeded" in r.getMessage() for r in caplog.records)
    assert position(sessions) == 8
    assert stream_state(nats_server.url) == (8, 1, 8)

    asyncio.run(make_stream(max_msgs=-1, discard=DiscardPolicy.OLD))
    resumed = stream_events(sessions, settings, batch=5)

    assert (resumed.published, resumed.duplicates, resumed.position) == (4, 0, 12)
    assert [m.document["data"]["n"] for m in read_stream(nats_server.url)] == list(range(12))


def test_nats_down_keeps_the_cursor_and_after_its_restart_consumers_miss_nothing(
    sessions: sessionmaker[Session],
    settings: Settings,
    nats_server: NatsServer,
    celery_app: TallyCelery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    account_a, account_b = "01JDACCOUNTCCCCCCCCCCCCCCC", "01JDACCOUNTDDDDDDDDDDDDDDD"
    write_raw(sessions, "default", account_a, 10)
    write_raw(sessions, "other", account_b, 10)
    assert stream_events(sessions, settings, batch=8).position == 20
    # A durable consumer reads 15 of them, then goes away.
    assert [m.seq for m in read_stream(nats_server.url, durable="reader", count=15)] == list(
        range(1, 16)
    )

    nats_server.stop()
    write_raw(sessions, "default", account_a, 10, first=10)
    write_raw(sessions, "other", account_b, 10, first=10)
    failures = REGISTRY.get_sample_value("tally_stream_failures_total") or 0.0
    with caplog.at_level(logging.WARNING, logger="worker.pump"):
        assert run_task(celery_app) == 0
        down = stream_events(sessions, settings, batch=8)
    assert (down.published, down.position) == (0, 20) and down.error is not None
    assert position(sessions) == 20
    assert REGISTRY.get_sample_value("tally_stream_failures_total") == failures + 1
    assert any("not streamed to NATS" in r.getMessage() for r in caplog.records)

    # The failed pass paused the stream. Held here past NATS's restart (which may take
    # longer than the pause on a loaded machine), the pause keeps the stream waiting.
    redis, pause = celery_app.resources.redis, celery_app.resources.keys.stream_pause
    assert 0 < redis.ttl(pause) <= STREAM_PAUSE_SECONDS
    redis.expire(pause, 60)
    nats_server.start()
    # The stream waits out its pause after the failed pass; then it streams what was missed.
    assert run_task(celery_app) == 0 and position(sessions) == 20
    redis.delete(pause)
    assert run_task(celery_app) == 20
    assert position(sessions) == 40

    events = logged_events(sessions)
    everything = read_stream(nats_server.url)
    assert [m.document for m in everything] == documents(events)
    assert [m.seq for m in everything] == list(range(1, 41))
    for account in (account_a, account_b):
        mine = [m.document for m in everything if m.document["account_id"] == account]
        assert [d["account_seq"] for d in mine] == list(range(1, 21))
        assert [d["data"]["n"] for d in mine] == list(range(20))
    # The durable consumer, back, goes on where it stopped; a new one from sequence 23
    # reads from there.
    assert [m.seq for m in read_stream(nats_server.url, durable="reader")] == list(range(16, 41))
    assert [m.document["id"] for m in read_stream(nats_server.url, start=23)] == list(range(23, 41))


def test_the_events_worker_streams_only_when_a_nats_url_is_set() -> None:
    assert [t.name for t in tickers(make_celery(Settings()))] == ["event pump"]
    app = make_celery(Settings(nats_url="nats://127.0.0.1:4222", events_interval=0.5))
    assert [(t.name, t.interval) for t in tickers(app)] == [
        ("event pump", 0.5), ("nats stream", 0.5),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("tenant", "expected"),
    [
        ("default", "default"),
        ("t_0a-B", "t_0a-B"),
        ("a.b", "a%2Eb"),
        ("a%2Eb", "a%252Eb"),
        ("x y*>", "x%20y%2A%3E"),
        ("zoë", "zo%C3%AB"),
    ],
)
def test_a_tenant_id_becomes_one_subject_token(tenant: str, expected: str) -> None:
    assert token(tenant) == expected
