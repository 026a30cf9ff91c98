"""The dispatcher: pending accounts in Redis or in the database, one drain task at a time,
no wakeup lost."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Sequence

import pytest
from redis import Redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

import shared.flow.dispatch
from shared.flow.dispatch import QUIET_SECONDS, Dispatcher, ScanningDispatcher
from shared.flow.outbox import SINGLE_PENDING, pending_single_accounts
from shared.platform.db import transaction
from shared.platform.keys import RedisKeys
from tests.factories import Caller, Factory, queue_requests


class Sends:
    """Records the partition of every drain task queued."""

    def __init__(self) -> None:
        self.partitions: list[int] = []

    def __call__(self, partition: int) -> None:
        self.partitions.append(partition)

    @property
    def count(self) -> int:
        return len(self.partitions)


def _dispatcher(redis: Redis, partitions: int = 1) -> tuple[Dispatcher, Sends]:
    sends = Sends()
    queue = "dispatch-" + secrets.token_hex(4)
    return Dispatcher(redis, RedisKeys("tests"), sends, queue, partitions), sends


def test_one_task_is_queued_while_one_is_queued_or_draining(redis: Redis) -> None:
    dispatcher, sends = _dispatcher(redis)
    assert dispatcher.notify(["a"]) == 1
    assert dispatcher.notify(["b"]) == 0  # a task is on its way: it will see b
    assert sends.count == 1
    assert dispatcher.take(0) == ["a", "b"]
    assert dispatcher.notify(["c"]) == 0  # the task is still draining
    assert dispatcher.take(0) == ["c"]
    assert dispatcher.take(0) == []
    assert dispatcher.release(0) is True
    assert dispatcher.notify(["d"]) == 1  # idle again: a new task
    assert sends.count == 2


def test_an_account_added_before_the_release_looks_again_is_drained(redis: Redis) -> None:
    dispatcher, sends = _dispatcher(redis)
    dispatcher.notify(["a"])
    assert dispatcher.take(0) == ["a"]
    assert dispatcher.take(0) == []
    # Between the empty take and the release, a request arrives: its notify sees the
    # mark and queues nothing, so the draining task must take the mark back.
    assert dispatcher.notify(["e"]) == 0
    assert dispatcher.release(0) is False
    assert dispatcher.take(0) == ["e"]
    assert dispatcher.release(0) is True
    assert sends.count == 1


def test_a_failed_send_frees_the_mark_for_the_next_notify(redis: Redis) -> None:
    dispatcher, _ = _dispatcher(redis)

    def broken(partition: int) -> None:
        raise ConnectionError("broker down")

    dispatcher.send = broken
    with pytest.raises(ConnectionError):
        dispatcher.notify(["a"])
    sends = Sends()
    dispatcher.send = sends
    assert dispatcher.notify(["b"]) == 1
    assert sends.count == 1
    assert dispatcher.take(0) == ["a", "b"]


def test_the_relay_queues_a_task_whatever_the_mark_says(redis: Redis) -> None:
    dispatcher, sends = _dispatcher(redis)
    dispatcher.notify(["a"])
    # The task holding the mark was lost (say, its worker was killed): force sends anew.
    assert dispatcher.notify(["a"], force=True) == 1
    assert sends.count == 2


def test_a_batch_of_ten_thousand_accounts_is_handed_over_whole(redis: Redis) -> None:
    dispatcher, sends = _dispatcher(redis)
    accounts = [f"account-{n:05}" for n in range(10_000)]
    assert dispatcher.notify(accounts) == 1
    assert sends.count == 1
    assert dispatcher.backlog() == 10_000
    taken = []
    while batch := dispatcher.take(0):
        taken += batch
    assert sorted(taken) == accounts


def test_partitions_split_accounts_and_each_gets_one_task(redis: Redis) -> None:
    dispatcher, sends = _dispatcher(redis, partitions=4)
    accounts = [f"account-{n:04}" for n in range(1_000)]
    assert dispatcher.notify(accounts) == 4
    assert sorted(sends.partitions) == [0, 1, 2, 3]
    assert dispatcher.notify(accounts[:10]) == 0  # every partition has its task on the way
    taken = {partition: [] for partition in range(4)}
    for partition in taken:
        while batch := dispatcher.take(partition):
            taken[partition] += batch
    # Every account once, in the partition its id hashes to (so two drain tasks of a
    # lane never apply the same account at once), and each partition has a fair share.
    assert sorted(a for part in taken.values() for a in part) == accounts
    for partition, part in taken.items():
        assert all(dispatcher.partition_of(a) == partition for a in part)
        assert 150 < len(part) < 350
    dispatcher.return_accounts(accounts[:3])
    assert dispatcher.backlog() == 3


class Committed:
    """A lane's pending accounts as its scan finds them, committed by the test."""

    def __init__(self) -> None:
        self.accounts: list[str] = []

    def __call__(self, limit: int, parked: Sequence[str]) -> list[str]:
        return sorted([a for a in self.accounts if a not in parked][:limit])


def _scanning(redis: Redis) -> tuple[ScanningDispatcher, Sends, Committed]:
    sends, committed = Sends(), Committed()
    queue = "dispatch-" + secrets.token_hex(4)
    return ScanningDispatcher(redis, RedisKeys("tests"), sends, queue, committed), sends, committed


def test_a_scanning_lane_skips_notifies_for_a_while_after_it_saw_the_mark(redis: Redis) -> None:
    dispatcher, sends, committed = _scanning(redis)
    committed.accounts.append("a")
    assert dispatcher.notify(["a"]) == 1
    assert not redis.exists(dispatcher.pending_keys[0])  # the accounts stay in the database
    redis.delete(dispatcher.dispatch_keys[0])
    # Within the quiet time this process does not ask Redis at all: the mark, gone
    # meanwhile, is not taken again.
    assert dispatcher.notify(["b"]) == 0
    assert not redis.exists(dispatcher.dispatch_keys[0])
    time.sleep(QUIET_SECONDS)
    assert dispatcher.notify(["c"]) == 1
    assert sends.count == 2
    # The relay's force is never skipped.
    assert dispatcher.notify(["c"], force=True) == 1
    assert sends.count == 3
    assert dispatcher.take(0) == ["a"]


def test_a_notify_while_the_process_asks_skips_and_a_failed_ask_lets_the_next_ask(
    redis: Redis,
) -> None:
    dispatcher, sends, _ = _scanning(redis)
    inside: list[int] = []

    def send_slowly(partition: int) -> None:
        if inside:
            raise AssertionError("a notify asked while the process's ask was on its way")
        # While this ask is on its way, another thread's notify skips without asking,
        # even where the mark is free again.
        redis.delete(dispatcher.dispatch_keys[0])
        inside.append(dispatcher.notify(["b"]))
        raise ConnectionError("broker down")

    dispatcher.send = send_slowly
    with pytest.raises(ConnectionError):
        dispatcher.notify(["a"])
    assert inside == [0]
    assert not redis.exists(dispatcher.dispatch_keys[0])
    # Nothing was seen: the next notify asks at once.
    dispatcher.send = sends
    assert dispatcher.notify(["c"]) == 1
    assert sends.count == 1


def test_a_parked_account_is_left_out_of_takes_and_releases_for_a_while(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared.flow.dispatch, "PARK_SECONDS", 0.2)
    dispatcher, _, committed = _scanning(redis)
    committed.accounts += ["poison", "b"]
    assert dispatcher.notify(["b"]) == 1
    dispatcher.park("poison")
    assert dispatcher.take(0) == ["b"]
    committed.accounts.remove("b")
    assert dispatcher.take(0) == []
    assert dispatcher.release(0) is True  # the parked account alone keeps no task looking
    time.sleep(0.2)
    assert dispatcher.take(0) == ["poison"]


def test_a_lane_of_sets_drops_a_parked_account_for_the_relay(redis: Redis) -> None:
    dispatcher, _ = _dispatcher(redis)
    dispatcher.notify(["poison", "b"])
    dispatcher.park("poison")
    assert dispatcher.take(0) == ["b"]
    dispatcher.return_accounts(["poison", "b"])  # a chunk with more to apply
    assert dispatcher.take(0) == ["b"]
    assert dispatcher.backlog() == 0


def test_a_request_whose_notify_was_skipped_is_found_by_the_releasing_task(
    redis: Redis,
) -> None:
    dispatcher, sends, committed = _scanning(redis)
    assert dispatcher.notify(["a"]) == 1  # the mark taken: this process goes quiet
    errors: list[AssertionError] = []

    def commit_and_skip() -> None:
        # Committed while the task gives up the mark; its notify skipped in the quiet time.
        time.sleep(QUIET_SECONDS / 2)
        committed.accounts.append("b")
        try:
            assert dispatcher.notify(["b"]) == 0
        except AssertionError as error:
            errors.append(error)

    request = threading.Thread(target=commit_and_skip)
    request.start()
    assert dispatcher.take(0) == []
    assert dispatcher.release(0) is False  # found b and took the mark back
    request.join()
    assert errors == []
    assert redis.exists(dispatcher.dispatch_keys[0])
    assert dispatcher.take(0) == ["b"]
    committed.accounts.clear()
    assert dispatcher.release(0) is True
    assert not redis.exists(dispatcher.dispatch_keys[0])
    assert sends.count == 1


def test_a_releasing_task_leaves_what_it_finds_to_a_task_queued_meanwhile(redis: Redis) -> None:
    dispatcher, sends, committed = _scanning(redis)
    other_process, _, _ = _scanning(redis)
    other_process.dispatch_keys = dispatcher.dispatch_keys
    other_process.send = sends
    assert dispatcher.notify(["a"]) == 1

    def commit_and_notify() -> None:
        time.sleep(QUIET_SECONDS / 2)
        committed.accounts.append("b")
        other_process.notify(["b"])  # not quiet: it takes the free mark and queues a task

    request = threading.Thread(target=commit_and_notify)
    request.start()
    assert dispatcher.release(0) is True
    request.join()
    assert sends.count == 2


def test_the_scan_finds_single_adjustments_oldest_first_and_no_batch_items(
    sessions: sessionmaker[Session], factory: Factory, moderator: Caller
) -> None:
    engine = sessions.kw["bind"]
    assert isinstance(engine, Engine)
    older = len(pending_single_accounts(engine, 10**9))
    with sessions() as session:
        older_rows = session.scalar(
            text(
                "SELECT count(*) FROM adjustment_requests"
                " WHERE status IN ('queued', 'processing') AND batch_id IS NULL"
            )
        )
    first, _ = queue_requests(sessions, moderator, factory.user().id, [1, 2])
    second, _ = queue_requests(sessions, moderator, factory.user().id, [3])
    batched, (batch_item,) = queue_requests(sessions, moderator, factory.user().id, [4])
    set_batch_id = text("UPDATE adjustment_requests SET batch_id = :batch WHERE id = :id")
    with transaction(sessions) as session:
        session.execute(set_batch_id, {"batch": "B" * 26, "id": batch_item})
    try:
        everything = pending_single_accounts(engine, 10**9)
        assert len(everything) == older + 2
        assert {first, second} <= set(everything)
        assert batched not in everything  # a batch item is the bulk lane's
        assert first not in pending_single_accounts(engine, 10**9, [first, "someone-else"])
        # The oldest rows first: the first account's two requests come before the second's.
        oldest = pending_single_accounts(engine, older_rows + 2)
        assert first in oldest
        assert second not in oldest
        # Its partial index can answer it (the statement implies the index's predicate),
        # however many batch items are pending. On a table this small the planner may as well
        # read any index: the other two that could serve are dropped for the question only.
        with sessions() as session:
            session.execute(text("SET LOCAL enable_seqscan = off"))
            session.execute(text("DROP INDEX ix_adjustment_requests_batch"))
            session.execute(text("DROP INDEX ix_adjustment_requests_pending"))
            plan = session.scalar(
                text(f"EXPLAIN (FORMAT JSON) {SINGLE_PENDING.text}"), {"rows": 5, "parked": []}
            )
            session.rollback()
        assert "ix_adjustment_requests_single_pending" in str(plan)
    finally:
        # A single adjustment again, so that no later test finds a batch item of no batch.
        with transaction(sessions) as session:
            session.execute(set_batch_id, {"batch": None, "id": batch_item})
