"""The dispatcher: pending accounts in Redis, one drain task at a time, no wakeup lost."""

from __future__ import annotations

import secrets

import pytest
from redis import Redis

from shared.flow.dispatch import Dispatcher
from shared.platform.keys import RedisKeys


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
