"""`tally reconcile` passes on a healthy ledger and reports a corrupted balance."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from cli.main import cli
from shared.flow.processing import drain_accounts
from shared.models import Batch, Role, new_ulid
from shared.platform.db import make_engine, make_session_factory, transaction
from shared.platform.resources import Resources
from tests.conftest import Services
from tests.factories import Factory, queue_requests
from tests.shared.test_ledger_rules import (
    DAY,
    Book,
    capture,
    earn,
    expire,
    hold,
    release,
    reversal,
    spend,
)


def _reconcile(services: Services) -> tuple[int, dict]:
    return _reconcile_database(services.database_url)


def _reconcile_database(database_url: str) -> tuple[int, dict]:
    runner = CliRunner(env={"TALLY_DATABASE_URL": database_url})
    result = runner.invoke(cli, ["reconcile", "--json"])
    return result.exit_code, json.loads(result.output)


def apply_now_with(resources: Resources, account_id: str) -> None:
    drain_accounts(
        [account_id],
        redis=resources.redis,
        keys=resources.keys,
        channel=resources.keys.done_channel("tests"),
        sessions=resources.sessions,
        lock_ttl=5,
        lock_wait=5,
        chunk=100,
    )


def test_reconcile_passes_then_reports_a_corrupted_balance(services: Services, base_settings):
    resources = Resources(base_settings)
    try:
        factory = Factory(resources.sessions)
        caller = factory.caller(Role.MODERATOR)
        user = factory.user()
        account_id, _ = queue_requests(resources.sessions, caller, user.id, [5, 7, -3])
        apply_now_with(resources, account_id)

        code, report = _reconcile(services)
        assert code == 0, report
        assert report["violations"] == []
        assert report["entries"] >= 3

        with resources.sessions.begin() as session:
            session.execute(
                text("UPDATE accounts SET balance = balance + 1 WHERE id = :id"),
                {"id": account_id},
            )
        code, report = _reconcile(services)
        assert code == 1
        assert [v["subject"] for v in report["violations"]] == [f"account {account_id}"]
        assert report["violations"][0]["invariant"] == 1
        assert "balance 10 vs ledger 9" in report["violations"][0]["detail"]
    finally:
        with resources.sessions.begin() as session:  # mend it for the tests that follow
            session.execute(
                text("UPDATE accounts SET balance = balance - 1 WHERE id = :id"),
                {"id": account_id},
            )
        resources.close()


def test_reconcile_reports_a_batch_whose_counts_disagree_with_its_items(
    services: Services, base_settings
) -> None:
    resources = Resources(base_settings)
    batch_id = new_ulid()
    try:
        caller = Factory(resources.sessions).caller(Role.MODERATOR)
        with resources.sessions.begin() as session:
            session.add(
                Batch(id=batch_id, tenant_id=caller.tenant_id, idempotency_key=batch_id,
                      fingerprint="x", total=1, created_by=caller.user_id)
            )  # fmt: skip
        code, report = _reconcile(services)
        assert code == 0, report

        with resources.sessions.begin() as session:
            session.execute(
                text("UPDATE batches SET completed = 1 WHERE id = :id"), {"id": batch_id}
            )
        code, report = _reconcile(services)
        assert code == 1
        assert [v["subject"] for v in report["violations"]] == [f"batch {batch_id}"]
        assert "completed 1 vs requests 0" in report["violations"][0]["detail"]
    finally:
        with resources.sessions.begin() as session:
            session.execute(text("DELETE FROM batches WHERE id = :id"), {"id": batch_id})
        resources.close()


def test_reconcile_reports_an_entry_that_disagrees_with_its_request(
    services: Services, base_settings
) -> None:
    resources = Resources(base_settings)
    try:
        factory = Factory(resources.sessions)
        caller, other = factory.caller(Role.MODERATOR), factory.caller(Role.MODERATOR)
        user = factory.user()
        account_id, (request_id,) = queue_requests(resources.sessions, caller, user.id, [4])
        apply_now_with(resources, account_id)
        code, report = _reconcile(services)
        assert code == 0, report

        with resources.sessions.begin() as session:
            session.execute(
                text("UPDATE adjustment_requests SET created_by = :other WHERE id = :id"),
                {"other": other.user_id, "id": request_id},
            )
        code, report = _reconcile(services)
        assert code == 1
        (violation,) = report["violations"]
        assert violation["invariant"] == 2
        assert f"request {request_id}" in violation["detail"]
    finally:
        with resources.sessions.begin() as session:
            session.execute(
                text("UPDATE adjustment_requests SET created_by = :me WHERE id = :id"),
                {"me": caller.user_id, "id": request_id},
            )
        resources.close()


# Invariants 7 to 10 and the expired points of invariant 1. reconcile checks the whole
# database, so each of these tests has one of its own (the corruptions stay there).


@dataclass(frozen=True)
class Healthy:
    """A ledger with every kind of row the new invariants cover, built by apply_pending."""

    account_id: str
    expired_lot: str  # a lot that expired, with an expire entry
    live_lot: str  # a lot with points left
    captured_hold: int
    reversal_entry: int
    # An entry of the same account that the reversal does not reverse.
    other_ulid: str
    tenant_id: str


def healthy_ledger(book: Book) -> Healthy:
    user, now = book.user(), book.now()
    expiring, live, plain = book.record_and_apply(
        earn(user, 50, now + DAY), earn(user, 40, now + 2 * DAY), earn(user, 100)
    )
    spent, held, _ = book.record_and_apply(spend(user, 5), hold(user, 30), hold(user, 10))
    _, undone, _ = book.record_and_apply(
        capture(user, held, 20),
        reversal(user, book.entry(spent)),
        expire(user, book.entry(expiring).ulid),
    )
    # The spend and the holds took 45 of the expiring lot; the capture kept 20 of them and
    # gave 10 back, the reversal gave the spend's 5 back, and its expiry took the 20 left.
    account = book.account(user)
    assert (account.balance, account.frozen_balance, account.expired_points) == (150, 10, 20)
    assert book.lot(live).remaining == 40
    return Healthy(
        account_id=account.id,
        expired_lot=book.entry(expiring).ulid,
        live_lot=book.entry(live).ulid,
        captured_hold=held,
        reversal_entry=book.entry(undone).id,
        other_ulid=book.entry(plain).ulid,
        tenant_id=account.tenant_id,
    )


# Each corruption: its statements (which may name the fields of Healthy), the check that
# must report it, and the subject it names. A CHECK constraint that would refuse the
# corruption is dropped first; a ledger row is changed with the immutability trigger off
# for that one statement.
CORRUPTIONS = [
    pytest.param(
        ["UPDATE accounts SET frozen_balance = frozen_balance + 1 WHERE id = :account_id"],
        "frozen_balance",
        "account {account_id}",
        id="frozen_balance",
    ),
    pytest.param(
        ["UPDATE accounts SET expired_points = expired_points + 1 WHERE id = :account_id"],
        "balance",
        "account {account_id}",
        id="expired_points",
    ),
    pytest.param(
        ["UPDATE lots SET expired_amount = expired_amount - 1 WHERE entry_ulid = :expired_lot"],
        "lot",
        "lot {expired_lot}",
        id="lot-expired-amount",
    ),
    pytest.param(
        [
            "ALTER TABLE lots DROP CONSTRAINT remaining_within_amount",
            "UPDATE lots SET remaining = amount + 1 WHERE entry_ulid = :live_lot",
        ],
        "lot",
        "lot {live_lot}",
        id="lot-remaining-above-amount",
    ),
    pytest.param(
        ["UPDATE holds SET captured = captured - 1 WHERE request_id = :captured_hold"],
        "hold",
        "hold {captured_hold}",
        id="hold-captured",
    ),
    pytest.param(
        ["UPDATE holds SET status = 'released', captured = 0 WHERE request_id = :captured_hold"],
        "hold",
        "hold {captured_hold}",
        id="hold-status",
    ),
    pytest.param(
        [
            "ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_immutable",
            "UPDATE ledger_entries SET related_id = :other_ulid WHERE id = :reversal_entry",
            "ALTER TABLE ledger_entries ENABLE TRIGGER ledger_entries_immutable",
        ],
        "reversal",
        "entry {reversal_entry}",
        id="reversal",
    ),
    pytest.param(
        # The board of all time counts the account twice at its score.
        [
            "UPDATE period_scores SET users = users + 1"
            " WHERE tenant_id = :tenant_id AND period = 'all' AND kind = 'all' AND users > 0"
        ],
        "period_scores",
        "tenant {tenant_id}",
        id="period-scores",
    ),
]


@pytest.fixture
def own_sessions(own_database: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(own_database, pool_size=2)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.mark.parametrize(("statements", "check", "subject"), CORRUPTIONS)
def test_reconcile_reports_each_corrupted_points_invariant(
    own_database: str,
    own_sessions: sessionmaker[Session],
    statements: list[str],
    check: str,
    subject: str,
) -> None:
    healthy = healthy_ledger(Book(own_sessions))
    code, report = _reconcile_database(own_database)
    assert code == 0, report
    assert report["violations"] == []

    names = vars(healthy)
    with transaction(own_sessions) as session:
        for statement in statements:
            session.execute(
                text(statement), {k: v for k, v in names.items() if f":{k}" in statement}
            )
    code, report = _reconcile_database(own_database)
    assert code == 1
    assert [(v["check"], v["subject"]) for v in report["violations"]] == [
        (check, subject.format(**names))
    ], report
    if check == "balance":
        assert "expired 21 vs 20" in report["violations"][0]["detail"]


# The states issue 20's two money bugs left behind, made by hand from a healthy ledger:
# `tally reconcile` reported nothing after either before invariants 8, 11 and 12 said
# where points come from and go back to.


def held_lot_released_after_expiry(book: Book) -> dict[str, object]:
    """Earn 100 expiring, hold them, the lot expires, release: all 100 expired."""
    user = book.user()
    lot, hold_id = book.record_and_apply(earn(user, 100, book.now() + DAY), hold(user, 100))
    book.record(expire(user, book.entry(lot).ulid))
    book.apply()
    (released,) = book.record_and_apply(release(user, hold_id))
    entry = book.entry(released)
    return {"lot": book.entry(lot).ulid, "account": book.account(user).id,
            "release": entry.ulid, "release_id": entry.id}  # fmt: skip


def expired_earn_reversed(book: Book) -> dict[str, object]:
    """100 never-expiring, 50 expiring of which 30 spent and 20 expired, the 50 reversed:
    the reversal takes back the 30 that did not expire."""
    user = book.user()
    _, lot, _ = book.record_and_apply(
        earn(user, 100), earn(user, 50, book.now() + DAY), spend(user, 30)
    )
    book.record_and_apply(expire(user, book.entry(lot).ulid))
    (undone,) = book.record_and_apply(reversal(user, book.entry(lot)))
    return {"lot": book.entry(lot).ulid, "account": book.account(user).id,
            "reversal": book.entry(undone).ulid, "reversal_id": book.entry(undone).id}  # fmt: skip


MONEY_BUGS = [
    pytest.param(
        held_lot_released_after_expiry,
        # Bug 1: the release gave the held points back as never-expiring points.
        [
            "DELETE FROM lot_moves WHERE entry_ulid = :release",
            "UPDATE ledger_entries SET amount = 0, expired = 0, balance_after = balance_before"
            " WHERE ulid = :release",
            "UPDATE lots SET expired_amount = 0 WHERE entry_ulid = :lot",
            "UPDATE accounts SET balance = 100, expired_points = 0 WHERE id = :account",
        ],
        # The entry's amount changed under its period totals too.
        {(12, "given_back", "entry {release_id}"), (13, "period_totals", "account {account}")},
        id="held-points-escape-expiry",
    ),
    pytest.param(
        held_lot_released_after_expiry,
        # Bug 1 again: the release gave them back to the lot, spendable, past its expiry
        # (which the lot's CHECK refuses, so it is dropped first).
        [
            "ALTER TABLE lots DROP CONSTRAINT expired_once",
            "UPDATE lot_moves SET delta = 100, expired = 0 WHERE entry_ulid = :release",
            "UPDATE ledger_entries SET amount = 0, expired = 0, balance_after = balance_before"
            " WHERE ulid = :release",
            "UPDATE lots SET remaining = 100, expired_amount = 0 WHERE entry_ulid = :lot",
            "UPDATE accounts SET balance = 100, expired_points = 0 WHERE id = :account",
        ],
        {(8, "lot", "lot {lot}"), (13, "period_totals", "account {account}")},
        id="expired-lot-spendable-again",
    ),
    pytest.param(
        expired_earn_reversed,
        # Bug 2: the reversal took back the whole earn, its expired 20 a second time.
        [
            "UPDATE lot_moves SET delta = -50 WHERE entry_ulid = :reversal",
            "UPDATE ledger_entries SET amount = -50, balance_after = balance_before - 50"
            " WHERE ulid = :reversal",
            "UPDATE adjustment_requests SET amount = -50 WHERE ledger_entry_id = :reversal_id",
            "UPDATE lots SET remaining = -50 WHERE entry_ulid = :lot",
            "UPDATE accounts SET balance = 50, total_spent = total_spent + 20 WHERE id = :account",
        ],
        {(8, "lot", "lot {lot}"), (13, "period_totals", "account {account}")},
        id="expired-earn-taken-twice",
    ),
]


@pytest.mark.parametrize(("scenario", "statements", "expected"), MONEY_BUGS)
def test_reconcile_reports_what_the_money_bugs_left(
    own_database: str,
    own_sessions: sessionmaker[Session],
    scenario: Callable[[Book], dict[str, object]],
    statements: list[str],
    expected: set[tuple[int, str, str]],
) -> None:
    names = scenario(Book(own_sessions))
    code, report = _reconcile_database(own_database)
    assert (code, report["violations"]) == (0, [])

    with transaction(own_sessions) as session:
        # As a hand-made repair would: past the append-only triggers (and foreign keys).
        session.execute(text("SET LOCAL session_replication_role = replica"))
        for statement in statements:
            session.execute(text(statement), names)
    code, report = _reconcile_database(own_database)
    assert code == 1
    found = {(v["invariant"], v["check"], v["subject"]) for v in report["violations"]}
    assert found == {(n, check, subject.format(**names)) for n, check, subject in expected}
