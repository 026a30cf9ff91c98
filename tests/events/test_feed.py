"""GET /api/v2/events: paged by cursor, filtered, per tenant, long-polled; and the order a
reader sees: never an event below its cursor, however late its writer committed."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from api.events import REREAD_SECONDS
from shared.events.log import number_events, read_events
from shared.models import Role
from shared.platform.db import make_session_factory
from tests.conftest import Services
from tests.factories import Caller, Factory, reputation
from worker.app import TallyCelery
from worker.pump import pump_events

Award = Callable[..., None]

WRITERS = 8
EVENTS_PER_WRITER = 25
INSERT_EVENT = text("""
    INSERT INTO events (tenant_id, account_id, type, payload)
    VALUES (:tenant, NULL, 'batch.accepted', CAST(:payload AS jsonb))
    RETURNING seq
""")


def pump(celery_app: TallyCelery) -> int:
    """A pass of the events worker's pump: number the committed events and announce their
    tenants."""
    return pump_events(celery_app)


def feed(client: FlaskClient, caller: Caller, **params: Any) -> TestResponse:
    headers = caller.headers | params.pop("headers", {})
    return client.get("/api/v2/events", query_string=params, headers=headers)


def read_all(client: FlaskClient, caller: Caller, **params: Any) -> list[dict[str, Any]]:
    answer = feed(client, caller, limit=1000, **params)
    assert answer.status_code == 200, answer.json
    events: list[dict[str, Any]] = answer.json["events"]
    return events


@pytest.fixture
def written(
    factory: Factory, moderator: Caller, award: Award, celery_app: TallyCelery
) -> tuple[int, int]:
    """Two users with two and one entries, their events numbered: (first, second) user ids."""
    first, second = factory.user(), factory.user()
    award(moderator, reputation(first.id, 5), reputation(first.id, 7), reputation(second.id, 3))
    pump(celery_app)
    return first.id, second.id


def test_pages_follow_the_cursor_to_the_end(
    client: FlaskClient, moderator: Caller, written: tuple[int, int]
) -> None:
    everything = read_all(client, moderator)
    # Each request: accepted, its entry, applied.
    assert len(everything) == 9
    ids = [event["id"] for event in everything]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {event["tenant_id"] for event in everything} == {moderator.tenant_id}

    pages, cursor = [], 0
    while True:
        answer = feed(client, moderator, after=cursor, limit=4)
        assert answer.status_code == 200
        page = answer.json
        assert "Preference-Applied" not in answer.headers
        assert page["next"].endswith(f"after={page['next_cursor']}")
        if not page["events"]:
            assert page["next_cursor"] == cursor  # nothing new: read from the same place
            break
        assert page["next_cursor"] == page["events"][-1]["id"]
        pages.append(page["events"])
        cursor = page["next_cursor"]
    assert [len(events) for events in pages] == [4, 4, 1]
    assert [event for events in pages for event in events] == everything


def test_types_and_account_narrow_the_feed(
    client: FlaskClient, moderator: Caller, written: tuple[int, int]
) -> None:
    first_user, _ = written
    entries = read_all(client, moderator, types="entry.created")
    assert [event["data"]["amount"] for event in entries] == [5, 7, 3]
    both = read_all(client, moderator, types="entry.created, request.applied")
    assert {event["type"] for event in both} == {"entry.created", "request.applied"}
    assert len(both) == 6

    account = entries[0]["account_id"]
    of_account = read_all(client, moderator, account=account)
    assert len(of_account) == 6
    assert {event["account_id"] for event in of_account} == {account}
    assert [event["account_seq"] for event in of_account] == [1, 2, 3, 4, 5, 6]
    assert {event["data"]["user_id"] for event in of_account} == {str(first_user)}
    narrow = read_all(client, moderator, account=account, types="entry.created")
    assert [event["data"]["amount"] for event in narrow] == [5, 7]
    assert read_all(client, moderator, account="01JDNOSUCHACCOUNT000000000") == []


def test_a_tenant_reads_only_its_own_events(
    client: FlaskClient,
    sessions: sessionmaker[Session],
    moderator: Caller,
    written: tuple[int, int],
) -> None:
    ours = read_all(client, moderator)
    stranger = Factory(sessions).caller(Role.ADMIN)
    assert read_all(client, stranger) == []
    # Not even by naming one of our accounts.
    assert read_all(client, stranger, account=ours[0]["account_id"]) == []
    assert ours == read_all(client, moderator)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"after": "-1"}, "after"),
        ({"after": "1.5"}, "after"),
        ({"after": "abc"}, "after"),
        ({"after": str(2**63)}, "after"),
        ({"types": "entry.created,no.such"}, "types"),
        ({"types": "Entry.Created"}, "types"),
        ({"limit": "0"}, "limit"),
        ({"limit": "-5"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"account": "x" * 27}, "account"),
    ],
)
def test_a_malformed_parameter_is_a_400_naming_it(
    client: FlaskClient, moderator: Caller, params: dict[str, str], field: str
) -> None:
    answer = feed(client, moderator, **params)
    assert answer.status_code == 400
    assert answer.mimetype == "application/problem+json"
    assert [error["field"] for error in answer.json["errors"]] == [field]


def test_the_feed_takes_a_moderator_or_admin_token(client: FlaskClient, factory: Factory) -> None:
    assert client.get("/api/v2/events").status_code == 401
    assert feed(client, factory.caller(Role.USER)).status_code == 403
    assert feed(client, factory.caller(Role.ADMIN)).status_code == 200


def test_a_long_poll_answers_as_soon_as_new_events_are_numbered_and_announced(
    client: FlaskClient,
    factory: Factory,
    moderator: Caller,
    award: Award,
    celery_app: TallyCelery,
) -> None:
    pump(celery_app)  # nothing of this tenant is left to number
    answers: list[TestResponse] = []
    poll = threading.Thread(
        target=lambda: answers.append(
            feed(client, moderator, after=0, headers={"Prefer": "wait=30"})
        )
    )
    poll.start()
    time.sleep(0.5)  # let it read, find nothing, and wait
    user = factory.user()
    award(moderator, reputation(user.id, 4))
    assert answers == []  # written, not numbered: not readable yet
    pumped = time.monotonic()
    pump(celery_app)
    poll.join(timeout=30)
    # Woken by the announcement, well before a lost one would be made up for by a reread.
    assert time.monotonic() - pumped < REREAD_SECONDS
    (answer,) = answers
    assert answer.status_code == 200
    assert answer.headers["Preference-Applied"] == "wait=30"
    assert [event["type"] for event in answer.json["events"]] == [
        "request.accepted",
        "entry.created",
        "request.applied",
    ]


def test_a_long_poll_with_nothing_new_answers_empty_after_its_wait(
    client: FlaskClient, moderator: Caller, celery_app: TallyCelery, written: tuple[int, int]
) -> None:
    cursor = read_all(client, moderator)[-1]["id"]
    redis = celery_app.resources.redis
    channel = celery_app.resources.keys.events_channel
    # A wake-up for this tenant with no new event in the database changes nothing.
    timer = threading.Timer(0.5, lambda: redis.publish(channel, json.dumps([moderator.tenant_id])))
    timer.start()
    started = time.monotonic()
    answer = feed(client, moderator, after=cursor, headers={"Prefer": "wait=2"})
    elapsed = time.monotonic() - started
    timer.join()
    assert answer.status_code == 200
    assert answer.json["events"] == [] and answer.json["next_cursor"] == cursor
    assert answer.headers["Preference-Applied"] == "wait=2"
    assert 1.9 <= elapsed < 30


def test_a_wait_above_the_servers_cap_is_cut_to_it(
    app_with: Callable[..., Any], moderator: Caller
) -> None:
    client = app_with(max_wait=1.0).test_client()
    started = time.monotonic()
    answer = feed(client, moderator, after=2**62, headers={"Prefer": "wait=600"})
    assert answer.status_code == 200 and answer.json["events"] == []
    assert answer.headers["Preference-Applied"] == "wait=1"
    assert time.monotonic() - started < 30


# The order a reader sees.


@pytest.fixture
def engine(services: Services) -> Iterator[Engine]:
    """An engine of its own, with a connection for each writer thread and the reader."""
    engine = services.engine(pool_size=WRITERS + 2)
    yield engine
    engine.dispose()


def number(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        number_events(session)


def test_an_event_committed_late_is_read_after_the_cursor_passed_its_write_position(
    engine: Engine, factory: Factory
) -> None:
    sessions = make_session_factory(engine)
    tenant = factory.tenant_id
    with sessions() as first, sessions() as second, sessions() as reader:
        # T1 writes first and stays open; T2 writes after it and commits.
        first_seq = first.execute(INSERT_EVENT, {"tenant": tenant, "payload": '{"t": 1}'}).scalar()
        second_seq = second.execute(
            INSERT_EVENT, {"tenant": tenant, "payload": '{"t": 2}'}
        ).scalar()
        second.commit()
        assert first_seq is not None and second_seq is not None and first_seq < second_seq

        number(sessions)
        seen = read_events(reader, tenant, 0, 100)
        reader.rollback()
        assert [event.payload for event in seen] == [{"t": 2}]
        cursor = seen[-1].id
        # A naive reader of the write order (a sequence filled at insert) is at T2's seq.
        naive_cursor = second_seq

        first.commit()
        number(sessions)
        later = read_events(reader, tenant, cursor, 100)
        reader.rollback()
        assert [event.payload for event in later] == [{"t": 1}]
        assert later[0].id > cursor
        # The naive reader never sees T1's event: its seq is below the cursor already.
        naive = reader.execute(
            text("SELECT payload FROM events WHERE tenant_id = :tenant AND seq > :after"),
            {"tenant": tenant, "after": naive_cursor},
        ).all()
        assert naive == []


def test_concurrent_writers_every_event_is_read_once_in_increasing_id(
    engine: Engine, factory: Factory
) -> None:
    sessions = make_session_factory(engine)
    tenant = factory.tenant_id
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        rng = random.Random(writer)
        try:
            for n in range(EVENTS_PER_WRITER):
                with sessions() as session:
                    payload = json.dumps({"writer": writer, "n": n})
                    session.execute(INSERT_EVENT, {"tenant": tenant, "payload": payload})
                    time.sleep(rng.uniform(0, 0.02))  # others insert and commit meanwhile
                    session.commit()
        except BaseException as error:
            errors.append(error)
            raise

    read: list[tuple[int, int, int]] = []  # (id, writer, n)
    writers_done = threading.Event()

    def reader() -> None:
        cursor = 0
        try:
            while True:
                last_pass = writers_done.is_set()
                number(sessions)
                with sessions() as session:
                    events = read_events(session, tenant, cursor, 50)
                for event in events:
                    read.append((event.id, event.payload["writer"], event.payload["n"]))
                    cursor = event.id
                if last_pass and not events:
                    return
        except BaseException as error:
            errors.append(error)
            raise

    threads = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
    reading = threading.Thread(target=reader)
    reading.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    writers_done.set()
    reading.join(timeout=120)
    assert not errors
    assert not reading.is_alive()

    ids = [event_id for event_id, _, _ in read]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "ids must only grow"
    written = {(w, n) for w in range(WRITERS) for n in range(EVENTS_PER_WRITER)}
    seen = [(w, n) for _, w, n in read]
    assert len(seen) == len(set(seen)), "an event was read twice"
    assert set(seen) == written, f"{len(written - set(seen))} events were never read"
