"""The dispatcher: pending accounts in Redis, one drain task at a time, no wakeup lost."""

from __future__ import annotations

import secrets

import pytest
from redis import Redis

from shared.dispatch import Dispatcher


class Sends:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def _dispatcher(redis: Redis) -> tuple[Dispatcher, Sends]:
    sends = Sends()
    return Dispatcher(redis, sends, queue="dispatch-" + secrets.token_hex(4)), sends


def test_one_task_is_queued_while_one_is_queued_or_draining(redis: Redis) -> None:
    dispatcher, sends = _dispatcher(redis)
    assert dispatcher.notify(["a"]) is True
    assert dispatcher.notify(["b"]) is False  # a task is on its way: it will see b
    assert sends.count == 1
    assert dispatcher.take() == ["a", "b"]
    assert dispatcher.notify(["c"]) is False  # the task is still draining
    assert dispatcher.take() == ["c"]
    assert dispatcher.take() == []
    assert dispatcher.release() is True
    assert dispatcher.notify(["d"]) is True  # idle again: a new task
    assert sends.count == 2


def test_an_account_added_before_the_release_looks_again_is_drained(redis: Redis) -> None:
    dispatcher, sends = _dispatcher(redis)
    dispatcher.notify(["a"])
    assert dispatcher.take() == ["a"]
    assert dispatcher.take() == []
    # Between the empty take and the release, a request arrives: its notify sees the
    # mark and queues nothing, so the draining task must take the mark back.
    assert dispatcher.notify(["e"]) is False
    assert dispatcher.release() is False
    assert dispatcher.take() == ["e"]
    assert dispatcher.release() is True
    assert sends.count == 1


def test_a_failed_send_frees_the_mark_for_the_next_notify(redis: Redis) -> None:
    dispatcher, _ = _dispatcher(redis)

    def broken() -> None:
        raise ConnectionError("broker down")

    dispatcher.send = broken
    with pytest.raises(ConnectionError):
        dispatcher.notify(["a"])
    sends = Sends()
    dispatcher.send = sends
    assert dispatcher.notify(["b"]) is True
    assert sends.count == 1
    assert dispatcher.take() == ["a", "b"]


def test_the_relay_queues_a_task_whatever_the_mark_says(redis: Redis) -> None:
    dispatcher, sends = _dispatcher(redis)
    dispatcher.notify(["a"])
    # The task holding the mark was lost (say, its worker was killed): force sends anew.
    assert dispatcher.notify(["a"], force=True) is True
    assert sends.count == 2


def test_a_batch_of_ten_thousand_accounts_is_handed_over_whole(redis: Redis) -> None:
    dispatcher, sends = _dispatcher(redis)
    accounts = [f"account-{n:05}" for n in range(10_000)]
    assert dispatcher.notify(accounts) is True
    assert sends.count == 1
    assert dispatcher.backlog() == 10_000
    taken = []
    while batch := dispatcher.take():
        taken += batch
    assert sorted(taken) == accounts
