"""TALLY_READ_DATABASE_URL: the read routes read from a streaming replica while it is
within TALLY_READ_MAX_LAG of the primary, and say how far behind they may be; money
reads (the accept path, idempotency, holds, balances, the worker) never go there.

A real pair: a throwaway primary with a tally database, and a standby streaming from it
(pg_basebackup); pausing the standby's replay makes it fall behind on demand.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from api.resources import STALENESS_HEADER
from shared.models import Account, Role
from shared.platform.db import make_engine, make_session_factory
from shared.platform.migrate import upgrade
from tests.chaos.services import ThrowawayPostgres
from tests.factories import Caller, Factory, apply_now

BOARD = "/api/v2/score/leaderboard/"
MAX_LAG = 5.0


@dataclass
class Pair:
    primary_url: str
    replica_url: str
    replica_libpq: str
    sessions: sessionmaker[Session]

    def replay(self, on: bool) -> None:
        """Resume or pause the standby's replay of the primary's WAL."""
        with psycopg.connect(self.replica_libpq, autocommit=True) as connection:
            connection.execute(f"SELECT pg_wal_replay_{'resume' if on else 'pause'}()")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    folder = tmp_path_factory.mktemp("replicas")
    primary = ThrowawayPostgres(folder / "primary")
    primary.start()
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{primary.port}/postgres",
                         autocommit=True) as connection:  # fmt: skip
        connection.execute("CREATE DATABASE tally")
    primary_url = f"postgresql+psycopg://postgres@127.0.0.1:{primary.port}/tally"
    upgrade(primary_url)
    replica = ThrowawayPostgres.standby_of(primary, folder / "replica")
    replica.start()
    engine = make_engine(primary_url, pool_size=2)
    try:
        yield Pair(
            primary_url,
            f"postgresql+psycopg://postgres@127.0.0.1:{replica.port}/tally",
            f"postgresql://postgres@127.0.0.1:{replica.port}/tally",
            make_session_factory(engine),
        )
    finally:
        engine.dispose()
        replica.stop()
        primary.stop()


@pytest.fixture
def on_pair(pair: Pair, app_with: Callable[..., Flask]) -> Iterator[Callable[..., Flask]]:
    """Apps on the pair's primary, reading from its standby; replay resumed afterwards."""

    def build(**overrides: Any) -> Flask:
        return app_with(
            database_url=pair.primary_url, read_database_url=pair.replica_url, **overrides
        )

    yield build
    pair.replay(True)


def _award(app: Flask, caller: Caller, user_id: int, score: int) -> None:
    client = app.test_client()
    posted = client.post(
        "/api/v2/score/",
        json={"user_id": user_id, "score": score, "comment": "c"},
        headers=caller.headers | {"Prefer": "respond-async"},
    )
    assert posted.status_code == 202, posted.json
    celery = app.extensions["tally"]
    with celery.resources.sessions() as session:
        account = session.scalar(select(Account.id).where(Account.user_id == user_id))
    apply_now(celery, [account])


def _board_total(client: FlaskClient, caller: Caller, user_id: int) -> tuple[int, float]:
    """The user's total on the all-time board, and the answer's staleness."""
    answer = client.get(BOARD, query_string={"period": "all"}, headers=caller.headers)
    assert answer.status_code == 200, answer.json
    totals = {row["user_id"]: row["total_score"] for row in answer.json["results"]}
    return totals.get(user_id, 0), float(answer.headers[STALENESS_HEADER])


def _until(check: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.1)


def test_a_replica_serves_reads_within_the_bound_and_a_lagging_one_is_not_used(
    pair: Pair, on_pair: Callable[..., Flask]
) -> None:
    app = on_pair(read_max_lag=MAX_LAG)
    client = app.test_client()
    factory = Factory(pair.sessions)
    caller, user = factory.caller(Role.MODERATOR), factory.user().id
    _award(app, caller, user, 5)
    _until(lambda: _board_total(client, caller, user)[0] == 5)  # the standby has it

    pair.replay(False)
    _award(app, caller, user, 7)
    answers = []
    _until(lambda: answers.append(_board_total(client, caller, user)) or answers[-1][0] == 12)
    stale = [staleness for total, staleness in answers if total == 5]
    fresh = answers[-1]
    # First from the paused standby, its data older than the award, and saying so...
    assert stale, "the standby was never read"
    assert all(0 < staleness <= MAX_LAG for staleness in stale), answers
    # ...then, once it is further behind than the bound, from the primary.
    assert fresh == (12, 0.0)
    replicas = app.extensions["tally"].resources.read_replicas
    assert replicas.lags()[0] > MAX_LAG - 1

    pair.replay(True)
    _until(lambda: replicas.choose().engine is replicas.replicas[0])  # caught up: in use again
    assert _board_total(client, caller, user)[0] == 12


def test_money_reads_never_go_to_a_replica(pair: Pair, on_pair: Callable[..., Flask]) -> None:
    """With replay paused and a bound so wide that the standby is always usable, every
    route that decides or reports money answers from the primary: not one statement of
    theirs runs on the standby, and what they answer is current."""
    app = on_pair(read_max_lag=3600.0)
    client = app.test_client()
    factory = Factory(pair.sessions)
    caller, user = factory.caller(Role.ADMIN), factory.user().id
    replicas = app.extensions["tally"].resources.read_replicas
    replica = replicas.replicas[0]
    # The standby has caught up with a position this process noted: from then on it is
    # usable, however far behind (a fresh process does not yet know how far behind a
    # paused standby is, and would not use it).
    _until(lambda: replicas.choose().engine is replica)
    on_replica: list[str] = []
    event.listen(replica, "before_cursor_execute", lambda *a, **_: on_replica.append(a[2]))

    pair.replay(False)
    _award(app, caller, user, 10)  # accepted and applied on the primary
    body = {"user_id": user, "score": 3, "comment": "c"}
    headers = caller.headers | {"Prefer": "respond-async", "Idempotency-Key": "k-1"}
    first = client.post("/api/v2/score/", json=body, headers=headers)
    again = client.post("/api/v2/score/", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.headers["Location"] == first.headers["Location"]  # the replay, found
    status = client.get(first.headers["Location"], headers=caller.headers)
    assert status.status_code == 200 and status.json["status"] == "queued"
    read = client.get(f"/api/v2/users/{user}", headers=caller.headers)
    assert read.status_code == 200 and read.json["reputation"] == 10
    assert STALENESS_HEADER not in read.headers
    assert on_replica == []

    # The read routes do use it (so the listener above would have seen them).
    total, staleness = _board_total(client, caller, user)
    assert on_replica, "the board was not read from the standby"
    assert total == 0 and staleness > 0  # the standby paused before the first award


def test_without_replicas_no_answer_speaks_of_staleness(
    client: FlaskClient, moderator: Caller
) -> None:
    answer = client.get(BOARD, headers=moderator.headers)
    assert answer.status_code == 200
    assert STALENESS_HEADER not in answer.headers
