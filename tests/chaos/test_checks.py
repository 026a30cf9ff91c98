"""The chaos checks catch what they are for, shown on rows made up here (no servers).

A check that passes on a broken ledger proves nothing: each case below hands the
checks a ledger with one fault planted (a request applied twice, applied out of
acceptance order, a batch applied out of item order, a retried key recorded twice)
and expects them to fail; the same ledger without the fault passes.
"""

from __future__ import annotations

import pytest

from tests.chaos.checks import (
    Row,
    check_exactly_once,
    check_order,
    check_requests_are_the_answered_ones,
    check_retried_keys,
)
from tests.chaos.load import Accepted, AcceptedBatch, Load

ACCOUNT = "A"


def _load() -> Load:
    """One user's requests from two clients: single 1 and the batch (items 2 and 3) in
    flight together; single 4 first sent once all of them were answered."""
    load = Load("http://unused", "token", [7])
    load.accepted = [
        Accepted("k1", 7, 5, 1, sent_at=0.0, answered_at=1.0),
        Accepted("k4", 7, 1, 4, sent_at=2.0, answered_at=3.0),
    ]
    load.batches = [AcceptedBatch("b", "batch-1", [(7, 2), (7, 3)], sent_at=0.5, answered_at=1.5)]
    return load


def _rows() -> dict[int, Row]:
    rows = [
        Row(1, "k1", "completed", "adjust", None, 7, 5, None),
        Row(2, "b:0", "completed", "adjust", "batch-1", 7, 2, None),
        Row(3, "b:1", "completed", "adjust", "batch-1", 7, 3, None),
        Row(4, "k4", "completed", "adjust", None, 7, 1, None),
    ]
    return {row.id: row for row in rows}


def _entries(*request_ids: int) -> list[tuple[int, int, str]]:
    """Ledger rows in entry id order, one per request id given."""
    return [(entry_id, request_id, ACCOUNT) for entry_id, request_id in enumerate(request_ids, 1)]


def test_a_sound_ledger_passes() -> None:
    check_exactly_once(_rows(), _entries(1, 2, 3, 4))
    check_requests_are_the_answered_ones(_rows(), _load(), {})
    assert sum(check_order(_rows(), _entries(1, 2, 3, 4), _load()).values()) == 0


def test_a_request_applied_twice_is_caught() -> None:
    # A dict keyed by request id would hold one entry for request 4 and pass.
    with pytest.raises(AssertionError, match="more than one ledger entry"):
        check_exactly_once(_rows(), _entries(1, 2, 3, 4, 4))


def test_a_rejected_request_with_an_entry_is_caught() -> None:
    rows = _rows()
    rows[4] = Row(4, "k4", "rejected", "adjust", None, 7, 1, "insufficient_balance")
    with pytest.raises(AssertionError, match="do not match"):
        check_exactly_once(rows, _entries(1, 2, 3, 4))


def test_out_of_acceptance_order_is_caught() -> None:
    # Request 4 was first sent after request 1 was answered, yet applied before it.
    with pytest.raises(AssertionError, match="out of acceptance order"):
        check_order(_rows(), _entries(4, 1, 2, 3), _load())


def test_concurrent_acceptances_may_apply_out_of_id_order() -> None:
    # Request 1 and the batch were in flight together: the batch may commit first.
    found = check_order(_rows(), _entries(2, 3, 1, 4), _load())
    assert found == {"single": 1}


def test_batch_items_out_of_item_order_are_caught() -> None:
    with pytest.raises(AssertionError, match="not applied in item order"):
        check_order(_rows(), _entries(1, 3, 2, 4), _load())


def test_a_retried_key_recorded_twice_is_caught() -> None:
    rows = _rows()
    rows[5] = Row(5, "k4", "completed", "adjust", None, 7, 1, None)
    load = _load()
    load.retried_keys = {"k4"}
    with pytest.raises(AssertionError):
        check_retried_keys(rows, load)


def test_a_request_no_client_was_answered_for_is_caught() -> None:
    rows = _rows()
    rows[5] = Row(5, "k5", "completed", "adjust", None, 7, 1, None)
    with pytest.raises(AssertionError, match="no client was answered for"):
        check_requests_are_the_answered_ones(rows, _load(), {})
