"""The points rules of shared.ledger.apply, applied by `apply_pending` itself, and the timers.

Each test has a database of its own (the `own_database` fixture), so that the timers,
which ask for every due lot and hold, and `reconcile`, which checks every account,
see only what the test made. Requests are recorded through the real accept function
(shared.intake.adjustments.submit) and applied by one `apply_pending` call per `Book.apply`
(one chunk); each test ends with the whole ledger reconciled.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Select, select, text
from sqlalchemy.orm import Session, sessionmaker

from shared.intake.adjustments import Adjustment, submit
from shared.intake.auth import Principal
from shared.intake.validation import UserRef
from shared.ledger.apply import Rejection, apply_pending
from shared.ledger.reconcile import Violation, reconcile
from shared.ledger.timers import request_expiries, request_hold_timeouts
from shared.models import (
    Account,
    AdjustmentRequest,
    EntryType,
    Hold,
    HoldStatus,
    LedgerEntry,
    Lot,
    Operation,
    ReputationType,
    Role,
)
from shared.platform.config import DEFAULT_POINTS_TYPES
from shared.platform.db import make_engine, make_session_factory, transaction
from tests.factories import Factory

COMPLETED = "completed"
DAY = timedelta(days=1)


# Requests as the routes build them (the hold routes set related_id to the hold's id).
def earn(user: int, amount: int, expires_at: datetime | None = None) -> Adjustment:
    return Adjustment(user_id=user, points_type="points", amount=amount, expires_at=expires_at)


def spend(
    user: int, amount: int, *, force: bool = False, points_type: str = "points"
) -> Adjustment:
    return Adjustment(user_id=user, points_type=points_type, amount=-amount, allow_negative=force)


def reversal(user: int, entry: LedgerEntry) -> Adjustment:
    """The request undoing `entry`, as the reversal route builds it."""
    return Adjustment(
        user_id=user,
        points_type=entry.points_type,
        amount=-entry.amount,
        related_id=entry.ulid,
        entry_type=Operation.REVERSAL,
    )


def hold(user: int, amount: int, expires_at: datetime | None = None) -> Adjustment:
    return Adjustment(
        user_id=user,
        points_type="points",
        amount=amount,
        expires_at=expires_at,
        entry_type=Operation.HOLD,
    )


def close(user: int, hold_id: int, operation: Operation, amount: int = 0) -> Adjustment:
    return Adjustment(
        user_id=user,
        points_type="points",
        amount=amount,
        related_id=str(hold_id),
        entry_type=operation,
    )


def capture(user: int, hold_id: int, amount: int = 0) -> Adjustment:
    return close(user, hold_id, Operation.CAPTURE, amount)


def release(user: int, hold_id: int) -> Adjustment:
    return close(user, hold_id, Operation.RELEASE)


def timeout(user: int, hold_id: int) -> Adjustment:
    return close(user, hold_id, Operation.TIMEOUT)


def expire(user: int, lot: str) -> Adjustment:
    """What request_expiries asks for lot `lot` (its earning entry's ULID)."""
    return Adjustment(
        user_id=user, points_type="points", amount=0, related_id=lot, entry_type=Operation.EXPIRE
    )


class Accept:
    """Records requests in one transaction: they share its now() as their created_at."""

    def __init__(self, session: Session, principal: Principal) -> None:
        self.session = session
        self.principal = principal

    def __call__(self, adjustment: Adjustment) -> int:
        recorded = submit(
            self.session.connection(), self.principal,
            UserRef("user_id", user_id=adjustment.user_id), adjustment,
            DEFAULT_POINTS_TYPES[adjustment.points_type], None,
        )  # fmt: skip
        return recorded.request_id

    def now(self) -> datetime:
        """The transaction's now(): the created_at of every request it records."""
        return self.session.scalar(text("SELECT now()"))


class Book:
    """One tenant's points: record requests, apply them in one chunk, read the rows back."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.factory = Factory(sessions)
        caller = self.factory.caller(Role.MODERATOR)
        self.caller_id = caller.user_id
        self.principal = Principal(
            caller.user_id, caller.tenant_id, caller.username, "", Role.MODERATOR
        )

    def user(self) -> int:
        return self.factory.user().id

    @contextmanager
    def accepting(self) -> Iterator[Accept]:
        with transaction(self.sessions) as session:
            yield Accept(session, self.principal)

    def record(self, *adjustments: Adjustment) -> list[int]:
        with self.accepting() as accept:
            return [accept(adjustment) for adjustment in adjustments]

    def apply(self, limit: int = 100) -> dict[int, str]:
        """One apply_pending call over the tenant's accounts: each request's outcome."""
        with transaction(self.sessions) as session:
            ids = session.scalars(
                select(Account.id).where(Account.tenant_id == self.principal.tenant_id)
            ).all()
            applied = apply_pending(session, ids, limit)
        return {o.request_id: o.error_code or COMPLETED for o in applied.outcomes}

    def record_and_apply(self, *adjustments: Adjustment) -> list[int]:
        ids = self.record(*adjustments)
        assert self.apply() == dict.fromkeys(ids, COMPLETED)
        return ids

    def now(self) -> datetime:
        with self.sessions() as session:
            return session.scalar(text("SELECT now()"))

    def wait_until(self, moment: datetime) -> None:
        """Until the database's clock has passed `moment` (a fraction of a second here)."""
        while self.now() <= moment:
            time.sleep(0.02)

    def _get(self, statement: Select[Any]) -> Any:
        with self.sessions() as session:
            return session.scalars(statement).one()

    def account(self, user: int, points_type: str = "points") -> Account:
        return self._get(
            select(Account).where(Account.user_id == user, Account.points_type == points_type)
        )

    def entry(self, request_id: int) -> LedgerEntry:
        return self._get(select(LedgerEntry).where(LedgerEntry.request_id == request_id))

    def lot(self, earned_by: int) -> Lot:
        """The lot of the entry that request `earned_by` made."""
        return self._get(select(Lot).where(Lot.entry_ulid == self.entry(earned_by).ulid))

    def hold(self, hold_id: int) -> Hold:
        return self._get(select(Hold).where(Hold.request_id == hold_id))

    def has_hold(self, hold_id: int) -> bool:
        with self.sessions() as session:
            return session.get(Hold, hold_id) is not None

    def requests(self, operation: Operation) -> list[AdjustmentRequest]:
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(AdjustmentRequest)
                    .where(
                        AdjustmentRequest.tenant_id == self.principal.tenant_id,
                        AdjustmentRequest.entry_type == operation,
                    )
                    .order_by(AdjustmentRequest.id)
                )
            )

    def freeze(self, user: int) -> None:
        with transaction(self.sessions) as session:
            session.execute(
                text("UPDATE accounts SET status = 'frozen' WHERE user_id = :user"), {"user": user}
            )

    def ask_expiries(self, limit: int = 100) -> list[str]:
        with transaction(self.sessions) as session:
            return request_expiries(session, limit)

    def ask_timeouts(self, limit: int = 100) -> list[str]:
        with transaction(self.sessions) as session:
            return request_hold_timeouts(session, limit)

    def violations(self) -> list[Violation]:
        """Every violation of the ledger invariants in the test's database."""
        with self.sessions() as session:
            return reconcile(session).violations


@pytest.fixture
def sessions(own_database: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(own_database, pool_size=2)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def book(sessions: sessionmaker[Session]) -> Book:
    return Book(sessions)


def totals(account: Account) -> dict[str, int]:
    return {
        "balance": account.balance,
        "frozen": account.frozen_balance,
        "earned": account.total_earned,
        "spent": account.total_spent,
        "expired": account.expired_points,
    }


# Lots


@pytest.mark.parametrize("same_chunk", [False, True], ids=["lots-stored", "lots-in-chunk"])
def test_a_spend_takes_the_lot_that_expires_first(book: Book, same_chunk: bool) -> None:
    user, now = book.user(), book.now()
    # The later lot is earned first, so neither entry order nor ULID order is expiry order.
    earnings = [earn(user, 50, now + 2 * DAY), earn(user, 30, now + DAY), earn(user, 20)]
    if same_chunk:
        late, early, _, _ = book.record_and_apply(*earnings, spend(user, 40))
    else:
        late, early, _ = book.record_and_apply(*earnings)
        book.record_and_apply(spend(user, 40))

    assert (book.lot(early).remaining, book.lot(late).remaining) == (0, 40)
    # Then the next lot, then the points that never expire.
    book.record_and_apply(spend(user, 45))
    assert (book.lot(early).remaining, book.lot(late).remaining) == (0, 0)
    assert totals(book.account(user)) == {
        "balance": 15, "frozen": 0, "earned": 100, "spent": 85, "expired": 0,
    }  # fmt: skip
    assert book.violations() == []


def test_an_expiry_takes_what_is_left_of_its_lot_and_counts_as_expired_not_spent(
    book: Book,
) -> None:
    user = book.user()
    lot, _ = book.record_and_apply(earn(user, 40, book.now() + DAY), earn(user, 60))
    book.record_and_apply(spend(user, 10))
    assert book.lot(lot).remaining == 30
    lot_ulid = book.entry(lot).ulid

    (expiry,) = book.record_and_apply(expire(user, lot_ulid))

    entry = book.entry(expiry)
    assert (entry.type, entry.amount, entry.frozen_amount, entry.related_id) == (
        EntryType.EXPIRE, -30, 0, lot_ulid,
    )  # fmt: skip
    expired = book.lot(lot)
    assert (expired.remaining, expired.expired_amount) == (0, 30)
    assert expired.expired_at is not None
    assert totals(book.account(user)) == {
        "balance": 60, "frozen": 0, "earned": 100, "spent": 10, "expired": 30,
    }  # fmt: skip
    assert book.violations() == []


@pytest.mark.parametrize("same_chunk", [False, True], ids=["spent-before", "spent-in-chunk"])
def test_a_lot_spent_before_its_expiry_has_nothing_to_expire(book: Book, same_chunk: bool) -> None:
    user = book.user()
    lot, _ = book.record_and_apply(earn(user, 30, book.now() + DAY), earn(user, 50))
    lot_ulid = book.entry(lot).ulid
    if same_chunk:
        # The spend was accepted first, so it is applied first, in the same chunk.
        spent, expiry = book.record(spend(user, 30), expire(user, lot_ulid))
        assert book.apply() == {spent: COMPLETED, expiry: Rejection.NOTHING_TO_EXPIRE}
    else:
        book.record_and_apply(spend(user, 30))
        (expiry,) = book.record(expire(user, lot_ulid))
        assert book.apply() == {expiry: Rejection.NOTHING_TO_EXPIRE}

    # The lot counts as expired all the same: points given back to it later expire at once.
    spent_lot = book.lot(lot)
    assert (spent_lot.remaining, spent_lot.expired_amount) == (0, 0)
    assert spent_lot.expired_at is not None
    assert totals(book.account(user)) == {
        "balance": 50, "frozen": 0, "earned": 80, "spent": 30, "expired": 0,
    }  # fmt: skip
    assert book.violations() == []


@pytest.mark.parametrize(("held", "outcome"), [(70, COMPLETED), (100, Rejection.NOTHING_TO_EXPIRE)])
def test_held_points_are_not_expired(book: Book, held: int, outcome: str) -> None:
    user = book.user()
    lot, hold_id = book.record_and_apply(earn(user, 100, book.now() + DAY), hold(user, held))

    (expiry,) = book.record(expire(user, book.entry(lot).ulid))
    assert book.apply() == {expiry: outcome}

    # The lot is done with either way: what could not expire stays, and never expires.
    expired = book.lot(lot)
    assert (expired.remaining, expired.expired_amount) == (0, 100 - held)
    assert expired.expired_at is not None
    assert totals(book.account(user)) == {
        "balance": held, "frozen": held, "earned": 100, "spent": 0, "expired": 100 - held,
    }  # fmt: skip
    # The held points are still there to capture.
    book.record_and_apply(capture(user, hold_id))
    assert totals(book.account(user)) == {
        "balance": 0, "frozen": 0, "earned": 100, "spent": held, "expired": 100 - held,
    }  # fmt: skip
    assert book.violations() == []


# Reversals


def test_a_reversal_of_an_earn_takes_back_from_its_own_lot_overdrawing_it(book: Book) -> None:
    user, now = book.user(), book.now()
    early, late, _ = book.record_and_apply(
        earn(user, 30, now + DAY), earn(user, 50, now + 2 * DAY), earn(user, 40)
    )
    book.record_and_apply(spend(user, 10))  # from the early lot
    assert (book.lot(early).remaining, book.lot(late).remaining) == (20, 50)

    (undo_late,) = book.record_and_apply(reversal(user, book.entry(late)))
    assert (book.lot(early).remaining, book.lot(late).remaining) == (20, 0)
    # Its own lot has 20 left: it owes the 10 that were spent (repaid if that spend is
    # reversed), and the never-expiring points are untouched.
    (undo_early,) = book.record_and_apply(reversal(user, book.entry(early)))
    assert (book.lot(early).remaining, book.lot(late).remaining) == (-10, 0)

    for request, original in ((undo_late, late), (undo_early, early)):
        entry = book.entry(request)
        assert (entry.type, entry.related_id, entry.reputation_type) == (
            EntryType.REVERSAL, book.entry(original).ulid, ReputationType.REVERSAL,
        )  # fmt: skip
    assert totals(book.account(user)) == {
        "balance": 30, "frozen": 0, "earned": 120, "spent": 90, "expired": 0,
    }  # fmt: skip
    assert book.violations() == []


def test_a_reversal_beyond_spendable_is_rejected(book: Book) -> None:
    user = book.user()
    earned, spent = book.record_and_apply(earn(user, 50), spend(user, 40))

    (refused,) = book.record(reversal(user, book.entry(earned)))
    assert book.apply() == {refused: Rejection.INSUFFICIENT_BALANCE}
    # A rejected reversal may be asked again; once the spend is undone, it fits.
    undo_spend, undo_earn = book.record(
        reversal(user, book.entry(spent)), reversal(user, book.entry(earned))
    )
    assert book.apply() == {undo_spend: COMPLETED, undo_earn: COMPLETED}
    assert totals(book.account(user)) == {
        "balance": 0, "frozen": 0, "earned": 90, "spent": 90, "expired": 0,
    }  # fmt: skip
    assert book.violations() == []


# Points given back go back to the lots they came from (issue 20, reproduction 1): before
# it, points a hold, a spend or a capture had taken came back as never-expiring points, so
# promotional points outlived their expiry.


def due_now(book: Book, user: int, earned: int) -> int:
    """Ask for the expiry of the lot of request `earned`, as the timer does when it is due."""
    (expiry,) = book.record(expire(user, book.entry(earned).ulid))
    return expiry


@pytest.mark.parametrize("closing", ["release", "timeout"])
def test_held_points_of_an_expired_lot_expire_when_the_hold_is_released(
    book: Book, closing: str
) -> None:
    user = book.user()
    lot, hold_id = book.record_and_apply(earn(user, 100, book.now() + DAY), hold(user, 100))
    assert book.lot(lot).remaining == 0  # the hold took them from the lot

    expiry = due_now(book, user, lot)
    assert book.apply() == {expiry: Rejection.NOTHING_TO_EXPIRE}
    assert book.lot(lot).expired_at is not None
    (released,) = book.record_and_apply(CLOSINGS[closing](user, hold_id))

    entry = book.entry(released)
    assert (entry.type, entry.amount, entry.frozen_amount, entry.expired) == (
        EntryType.RELEASE, -100, -100, 100,
    )  # fmt: skip
    assert (book.lot(lot).remaining, book.lot(lot).expired_amount) == (0, 100)
    assert totals(book.account(user)) == {
        "balance": 0, "frozen": 0, "earned": 100, "spent": 0, "expired": 100,
    }  # fmt: skip
    assert book.violations() == []


def test_a_capture_for_less_after_the_expiry_expires_the_rest(book: Book) -> None:
    user = book.user()
    lot, _, hold_id = book.record_and_apply(
        earn(user, 100, book.now() + DAY), earn(user, 50), hold(user, 120)
    )
    book.apply()
    expiry = due_now(book, user, lot)
    assert book.apply() == {expiry: Rejection.NOTHING_TO_EXPIRE}

    # The hold holds 100 of the lot and 20 never-expiring: the capture keeps the lot's
    # first, and the 10 of the lot it gives back expire.
    (captured,) = book.record_and_apply(capture(user, hold_id, 90))
    entry = book.entry(captured)
    assert (entry.amount, entry.frozen_amount, entry.expired) == (-100, -120, 10)
    assert totals(book.account(user)) == {
        "balance": 50, "frozen": 0, "earned": 150, "spent": 90, "expired": 10,
    }  # fmt: skip
    assert book.violations() == []


@pytest.mark.parametrize("reversed_after_expiry", [False, True], ids=["before", "after"])
def test_a_refunded_spend_returns_its_points_to_their_lot(
    book: Book, reversed_after_expiry: bool
) -> None:
    user = book.user()
    lot, spent = book.record_and_apply(earn(user, 100, book.now() + DAY), spend(user, 60))
    if reversed_after_expiry:
        book.record_and_apply(expire(user, book.entry(lot).ulid))
    (refund,) = book.record_and_apply(reversal(user, book.entry(spent)))
    if not reversed_after_expiry:
        assert book.lot(lot).remaining == 100
        book.record_and_apply(expire(user, book.entry(lot).ulid))

    # Either way all 100 expire: 40 at the expiry and 60 with the refund, or 100 at once.
    entry = book.entry(refund)
    assert (entry.amount, entry.expired) == ((0, 60) if reversed_after_expiry else (60, 0))
    assert totals(book.account(user)) == {
        "balance": 0, "frozen": 0, "earned": 160, "spent": 60, "expired": 100,
    }  # fmt: skip
    assert book.violations() == []


def test_a_reversed_capture_returns_its_points_to_their_lot(book: Book) -> None:
    user = book.user()
    lot, hold_id = book.record_and_apply(earn(user, 100, book.now() + DAY), hold(user, 100))
    (captured,) = book.record_and_apply(capture(user, hold_id, 60))
    assert book.lot(lot).remaining == 40
    book.record_and_apply(expire(user, book.entry(lot).ulid))

    (undone,) = book.record_and_apply(reversal(user, book.entry(captured)))
    assert (book.entry(undone).amount, book.entry(undone).expired) == (0, 60)
    assert totals(book.account(user)) == {
        "balance": 0, "frozen": 0, "earned": 160, "spent": 60, "expired": 100,
    }  # fmt: skip
    assert book.violations() == []


# A reversal of an earn takes back no more than what of it has not expired (issue 20,
# reproduction 2): before it, an expired earn was taken twice.


def test_a_reversal_of_an_expired_earn_is_rejected(book: Book) -> None:
    user = book.user()
    _, lot = book.record_and_apply(earn(user, 100), earn(user, 50, book.now() + DAY))
    book.record_and_apply(expire(user, book.entry(lot).ulid))
    assert totals(book.account(user))["balance"] == 100

    (refused,) = book.record(reversal(user, book.entry(lot)))
    assert book.apply() == {refused: Rejection.ALREADY_EXPIRED}
    assert totals(book.account(user)) == {
        "balance": 100, "frozen": 0, "earned": 150, "spent": 0, "expired": 50,
    }  # fmt: skip
    assert book.violations() == []


def test_a_reversal_of_a_partly_expired_earn_takes_back_what_did_not_expire(book: Book) -> None:
    user = book.user()
    _, lot, spent = book.record_and_apply(
        earn(user, 100), earn(user, 50, book.now() + DAY), spend(user, 30)
    )
    book.record_and_apply(expire(user, book.entry(lot).ulid))  # the 20 left
    (undone,) = book.record_and_apply(reversal(user, book.entry(lot)))

    # 50 earned, 20 expired: 30 taken back. They were spent, so the lot owes them...
    assert book.entry(undone).amount == -30
    assert (book.lot(lot).remaining, book.lot(lot).expired_amount) == (-30, 20)
    assert totals(book.account(user))["balance"] == 70
    # ...until the spend is reversed: its 30 repay the lot, and nothing more expires.
    (refund,) = book.record_and_apply(reversal(user, book.entry(spent)))
    assert (book.entry(refund).amount, book.entry(refund).expired) == (30, 0)
    assert (book.lot(lot).remaining, book.lot(lot).expired_amount) == (0, 20)
    assert totals(book.account(user)) == {
        "balance": 100, "frozen": 0, "earned": 180, "spent": 60, "expired": 20,
    }  # fmt: skip
    assert book.violations() == []


def test_an_overdrawn_lot_is_repaid_by_another_lot_before_it_expires(book: Book) -> None:
    user, now = book.user(), book.now()
    first, second = book.record_and_apply(earn(user, 50, now + DAY), earn(user, 100, now + 2 * DAY))
    _, held = book.record_and_apply(spend(user, 30), hold(user, 20))  # all of the first
    book.record_and_apply(reversal(user, book.entry(first)))
    assert (book.lot(first).remaining, totals(book.account(user))["balance"]) == (-50, 70)

    # The second lot's 100 first repay the 50 the first owes; 50 expire. The held 20 stay.
    (expiry,) = book.record_and_apply(expire(user, book.entry(second).ulid))
    assert (book.entry(expiry).amount, book.lot(first).remaining) == (-50, 0)
    assert totals(book.account(user)) == {
        "balance": 20, "frozen": 20, "earned": 150, "spent": 80, "expired": 50,
    }  # fmt: skip
    # Released, the 20 go back to the first lot, to expire with it.
    book.record_and_apply(release(user, held))
    assert (book.lot(first).remaining, totals(book.account(user))["balance"]) == (20, 20)
    assert book.violations() == []


# Holds


def test_a_hold_beyond_spendable_is_rejected(book: Book) -> None:
    user = book.user()
    book.record_and_apply(earn(user, 100))

    first, too_much, rest, spent = book.record(
        hold(user, 70), hold(user, 40), hold(user, 30), spend(user, 1)
    )
    assert book.apply() == {
        first: COMPLETED,
        too_much: Rejection.INSUFFICIENT_BALANCE,
        rest: COMPLETED,
        spent: Rejection.INSUFFICIENT_BALANCE,
    }
    assert not book.has_hold(too_much)
    assert [book.hold(h).amount for h in (first, rest)] == [70, 30]
    assert totals(book.account(user)) == {
        "balance": 100, "frozen": 100, "earned": 100, "spent": 0, "expired": 0,
    }  # fmt: skip
    entry = book.entry(first)
    assert (entry.type, entry.amount, entry.frozen_amount, entry.related_id) == (
        EntryType.HOLD, 0, 70, str(first),
    )  # fmt: skip

    # Released, those points are spendable again.
    book.record_and_apply(release(user, first), spend(user, 70))
    assert totals(book.account(user))["balance"] == 30
    assert book.violations() == []


def test_a_capture_for_less_than_its_hold_unfreezes_all_of_it(book: Book) -> None:
    user = book.user()
    lot, _, hold_id = book.record_and_apply(
        earn(user, 30, book.now() + DAY), earn(user, 70), hold(user, 60)
    )

    (captured,) = book.record_and_apply(capture(user, hold_id, 25))
    # A hold takes no points from the lots; its capture does, the first to expire first.
    assert book.lot(lot).remaining == 5

    entry = book.entry(captured)
    assert (entry.type, entry.amount, entry.frozen_amount, entry.related_id) == (
        EntryType.CAPTURE, -25, -60, str(hold_id),
    )  # fmt: skip
    closed = book.hold(hold_id)
    assert (closed.status, closed.captured, closed.closed_by) == (
        HoldStatus.CAPTURED, 25, captured,
    )  # fmt: skip
    assert closed.closed_at is not None
    assert totals(book.account(user)) == {
        "balance": 75, "frozen": 0, "earned": 100, "spent": 25, "expired": 0,
    }  # fmt: skip
    assert book.violations() == []


def test_a_capture_may_not_exceed_its_hold(book: Book) -> None:
    user = book.user()
    _, hold_id = book.record_and_apply(earn(user, 100), hold(user, 60))

    (too_much,) = book.record(capture(user, hold_id, 61))
    assert book.apply() == {too_much: Rejection.CAPTURE_EXCEEDS_HOLD}
    assert book.hold(hold_id).status == HoldStatus.OPEN
    assert totals(book.account(user))["frozen"] == 60

    # Amount 0 captures the whole hold.
    (whole,) = book.record_and_apply(capture(user, hold_id))
    assert (book.entry(whole).amount, book.entry(whole).frozen_amount) == (-60, -60)
    assert (book.hold(hold_id).status, book.hold(hold_id).captured) == (HoldStatus.CAPTURED, 60)
    assert totals(book.account(user)) == {
        "balance": 40, "frozen": 0, "earned": 100, "spent": 60, "expired": 0,
    }  # fmt: skip
    assert book.violations() == []


def test_a_release_unfreezes_the_hold_and_moves_no_points(book: Book) -> None:
    user = book.user()
    _, hold_id = book.record_and_apply(earn(user, 100), hold(user, 60))

    (released,) = book.record_and_apply(release(user, hold_id))

    entry = book.entry(released)
    assert (entry.type, entry.amount, entry.frozen_amount, entry.related_id) == (
        EntryType.RELEASE, 0, -60, str(hold_id),
    )  # fmt: skip
    closed = book.hold(hold_id)
    assert (closed.status, closed.captured, closed.closed_by) == (
        HoldStatus.RELEASED, 0, released,
    )  # fmt: skip
    assert totals(book.account(user)) == {
        "balance": 100, "frozen": 0, "earned": 100, "spent": 0, "expired": 0,
    }  # fmt: skip
    assert book.violations() == []


CLOSINGS = {"capture": capture, "release": release, "timeout": timeout}


@pytest.mark.parametrize("same_chunk", [False, True], ids=["apart", "one-chunk"])
@pytest.mark.parametrize(
    ("first", "second"), [("capture", "release"), ("release", "capture"), ("capture", "timeout")]
)
def test_a_closed_hold_cannot_be_closed_again(
    book: Book, first: str, second: str, same_chunk: bool
) -> None:
    user = book.user()
    _, hold_id = book.record_and_apply(earn(user, 100), hold(user, 60))

    if same_chunk:
        closing, again = book.record(
            CLOSINGS[first](user, hold_id), CLOSINGS[second](user, hold_id)
        )
        assert book.apply() == {closing: COMPLETED, again: Rejection.HOLD_NOT_OPEN}
    else:
        (closing,) = book.record_and_apply(CLOSINGS[first](user, hold_id))
        (again,) = book.record(CLOSINGS[second](user, hold_id))
        assert book.apply() == {again: Rejection.HOLD_NOT_OPEN}

    assert book.hold(hold_id).closed_by == closing
    assert totals(book.account(user))["frozen"] == 0
    assert book.violations() == []


def test_a_hold_of_another_account_or_never_placed_is_not_open(book: Book) -> None:
    owner, other = book.user(), book.user()
    _, hold_id = book.record_and_apply(earn(owner, 100), hold(owner, 60))
    book.record_and_apply(earn(other, 100))

    theirs, unknown = book.record(capture(other, hold_id), release(owner, hold_id + 1000))
    assert book.apply() == {theirs: Rejection.HOLD_NOT_OPEN, unknown: Rejection.HOLD_NOT_OPEN}
    assert book.hold(hold_id).status == HoldStatus.OPEN
    assert book.violations() == []


def test_a_close_accepted_at_or_after_the_timeout_is_refused_and_the_timeout_releases(
    book: Book,
) -> None:
    user = book.user()
    book.record_and_apply(earn(user, 100))
    with book.accepting() as accept:
        # The hold times out at the very moment the capture and release are accepted.
        hold_id = accept(hold(user, 40, accept.now()))
        late_capture = accept(capture(user, hold_id, 10))
        late_release = accept(release(user, hold_id))
    assert book.apply() == {
        hold_id: COMPLETED,
        late_capture: Rejection.HOLD_EXPIRED,
        late_release: Rejection.HOLD_EXPIRED,
    }
    assert book.hold(hold_id).status == HoldStatus.OPEN

    account_id = book.account(user).id
    assert book.ask_timeouts() == [account_id]
    (timed_out,) = (r.id for r in book.requests(Operation.TIMEOUT))
    assert book.apply() == {timed_out: COMPLETED}

    entry = book.entry(timed_out)
    assert (entry.type, entry.amount, entry.frozen_amount, entry.related_id) == (
        EntryType.RELEASE, 0, -40, str(hold_id),
    )  # fmt: skip
    closed = book.hold(hold_id)
    assert (closed.status, closed.captured, closed.closed_by) == (
        HoldStatus.TIMED_OUT, 0, timed_out,
    )  # fmt: skip
    assert totals(book.account(user)) == {
        "balance": 100, "frozen": 0, "earned": 100, "spent": 0, "expired": 0,
    }  # fmt: skip
    assert book.ask_timeouts() == []
    assert book.violations() == []


def test_a_capture_accepted_before_the_timeout_wins_though_applied_after_it(book: Book) -> None:
    user = book.user()
    book.record_and_apply(earn(user, 100))
    with book.accepting() as accept:
        times_out = accept.now() + timedelta(milliseconds=200)
        hold_id = accept(hold(user, 40, times_out))
        early_capture = accept(capture(user, hold_id))
    assert book.apply(limit=1) == {hold_id: COMPLETED}
    book.wait_until(times_out)

    # The timeout is asked after the capture was accepted, so it comes second.
    assert book.ask_timeouts() == [book.account(user).id]
    (timed_out,) = (r.id for r in book.requests(Operation.TIMEOUT))
    assert book.apply() == {early_capture: COMPLETED, timed_out: Rejection.HOLD_NOT_OPEN}
    assert (book.hold(hold_id).status, book.hold(hold_id).closed_by) == (
        HoldStatus.CAPTURED, early_capture,
    )  # fmt: skip
    assert book.ask_timeouts() == []
    assert totals(book.account(user)) == {
        "balance": 60, "frozen": 0, "earned": 100, "spent": 40, "expired": 0,
    }  # fmt: skip
    assert book.violations() == []


def test_a_hold_and_its_closing_apply_in_one_chunk(book: Book) -> None:
    user = book.user()
    book.record_and_apply(earn(user, 100))
    with book.accepting() as accept:
        hold_id = accept(hold(user, 40))
        captured = accept(capture(user, hold_id, 10))
        again = accept(release(user, hold_id))
        refused = accept(hold(user, 1000))
        of_refused = accept(capture(user, refused))
        released_id = accept(hold(user, 20))
        released = accept(release(user, released_id))

    assert book.apply() == {
        hold_id: COMPLETED,
        captured: COMPLETED,
        again: Rejection.HOLD_NOT_OPEN,
        refused: Rejection.INSUFFICIENT_BALANCE,
        of_refused: Rejection.HOLD_NOT_OPEN,
        released_id: COMPLETED,
        released: COMPLETED,
    }
    placed = book.hold(hold_id)
    assert (placed.amount, placed.status, placed.captured, placed.closed_by) == (
        40, HoldStatus.CAPTURED, 10, captured,
    )  # fmt: skip
    assert placed.closed_at is not None
    other = book.hold(released_id)
    assert (other.status, other.closed_by) == (HoldStatus.RELEASED, released)
    assert not book.has_hold(refused)
    assert [(book.entry(r).amount, book.entry(r).frozen_amount) for r in (hold_id, captured)] == [
        (0, 40), (-10, -40),
    ]  # fmt: skip
    assert totals(book.account(user)) == {
        "balance": 90, "frozen": 0, "earned": 100, "spent": 10, "expired": 0,
    }  # fmt: skip
    assert book.violations() == []


# Frozen accounts and forced spends


def test_a_frozen_account_refuses_all_but_expiries_and_timeouts(book: Book) -> None:
    user = book.user()
    lot, _, timing_out, open_hold = book.record_and_apply(
        earn(user, 50, book.now() + DAY), earn(user, 50), hold(user, 30), hold(user, 10)
    )
    book.freeze(user)

    refused = book.record(
        earn(user, 10),
        spend(user, 5),
        spend(user, 5, force=True),
        hold(user, 5),
        capture(user, open_hold),
        release(user, open_hold),
    )
    expiry, timed_out = book.record(expire(user, book.entry(lot).ulid), timeout(user, timing_out))
    assert book.apply() == {
        **dict.fromkeys(refused, Rejection.ACCOUNT_FROZEN),
        expiry: COMPLETED,
        timed_out: COMPLETED,
    }
    # The holds took their 40 points from the lot: the expiry takes the 10 left, and the
    # timed-out hold's 30 expire as they come back to the expired lot.
    assert book.entry(expiry).amount == -10
    assert (book.entry(timed_out).amount, book.entry(timed_out).expired) == (-30, 30)
    assert book.hold(timing_out).status == HoldStatus.TIMED_OUT
    assert book.hold(open_hold).status == HoldStatus.OPEN
    assert totals(book.account(user)) == {
        "balance": 60, "frozen": 10, "earned": 100, "spent": 0, "expired": 40,
    }  # fmt: skip
    assert book.violations() == []


def test_a_forced_spend_goes_below_zero_only_when_nothing_is_held(book: Book) -> None:
    free, holding = book.user(), book.user()
    _, _, hold_id = book.record_and_apply(earn(free, 50), earn(holding, 50), hold(holding, 20))

    forced, unforced, held = book.record(spend(free, 80, force=True), spend(free, 1), hold(free, 1))
    assert book.apply() == {
        forced: COMPLETED,
        unforced: Rejection.INSUFFICIENT_BALANCE,
        held: Rejection.INSUFFICIENT_BALANCE,
    }
    assert book.account(free).balance == -30
    assert (book.entry(forced).balance_after, book.entry(forced).negative_allowed) == (-30, True)

    # With 20 points held, forced spends may take the balance down to 20, not below.
    below_held, to_held, past_held = book.record(
        spend(holding, 40, force=True),
        spend(holding, 30, force=True),
        spend(holding, 1, force=True),
    )
    assert book.apply() == {
        below_held: Rejection.INSUFFICIENT_BALANCE,
        to_held: COMPLETED,
        past_held: Rejection.INSUFFICIENT_BALANCE,
    }
    assert totals(book.account(holding)) == {
        "balance": 20, "frozen": 20, "earned": 50, "spent": 30, "expired": 0,
    }  # fmt: skip
    # Released, nothing is held: below zero again.
    book.record_and_apply(release(holding, hold_id), spend(holding, 25, force=True))
    assert book.account(holding).balance == -5
    assert book.violations() == []


def test_a_type_that_allows_negatives_needs_no_force(book: Book) -> None:
    user = book.user()
    (spent,) = book.record_and_apply(spend(user, 10, points_type="reputation"))
    assert book.account(user, "reputation").balance == -10
    assert book.entry(spent).negative_allowed is True
    assert book.violations() == []


def test_an_expiry_first_repays_the_points_owed(book: Book) -> None:
    user = book.user()
    lot = Adjustment(
        user_id=user, points_type="reputation", amount=100, expires_at=book.now() + DAY
    )
    earned, _ = book.record_and_apply(lot, spend(user, 130, points_type="reputation"))
    # The spend took the lot's 100 (then 30 below zero): nothing is left of it to expire.
    assert book.lot(earned).remaining == 0
    again, _ = book.record_and_apply(lot, spend(user, 20, points_type="reputation"))
    (expiry,) = book.record(
        dataclasses.replace(expire(user, book.entry(again).ulid), points_type="reputation")
    )
    assert book.apply() == {expiry: COMPLETED}
    # -30 + 100 - 20 = 50: the lot's 80 left first repay the 30 owed, and 50 expire.
    assert book.account(user, "reputation").balance == 0
    assert book.lot(again).expired_amount == 50
    assert book.violations() == []


# Timers


def test_request_expiries_asks_once_per_due_lot_and_not_before_it_is_due(book: Book) -> None:
    user, now = book.user(), book.now()
    spent, first, second, future, _ = book.record_and_apply(
        earn(user, 5, now - timedelta(minutes=3)),
        earn(user, 10, now - timedelta(minutes=2)),
        earn(user, 20, now - timedelta(minutes=1)),
        earn(user, 30, now + timedelta(hours=1)),
        earn(user, 100),
    )
    book.record_and_apply(spend(user, 5))  # the lot that expires first
    assert book.lot(spent).remaining == 0
    account_id = book.account(user).id
    # The spent lot is due too: nothing is left in it, but it expires all the same.
    due = [book.entry(r).ulid for r in (spent, first, second)]

    # The first due first; then the rest; then nothing more, however often it runs.
    assert book.ask_expiries(limit=1) == [account_id]
    assert [r.related_id for r in book.requests(Operation.EXPIRE)] == due[:1]
    assert book.ask_expiries() == [account_id]
    assert book.ask_expiries() == []
    asked = book.requests(Operation.EXPIRE)
    assert [r.related_id for r in asked] == due
    assert {(r.amount, r.user_id, r.created_by, r.source) for r in asked} == {
        (0, user, book.caller_id, "tally")
    }

    assert book.apply() == {
        asked[0].id: Rejection.NOTHING_TO_EXPIRE,
        asked[1].id: COMPLETED,
        asked[2].id: COMPLETED,
    }
    assert book.lot(spent).expired_amount == 0
    assert [book.lot(r).expired_amount for r in (first, second)] == [10, 20]
    assert (book.lot(future).remaining, book.lot(future).expired_at) == (30, None)
    assert book.ask_expiries() == []
    assert totals(book.account(user)) == {
        "balance": 130, "frozen": 0, "earned": 165, "spent": 5, "expired": 30,
    }  # fmt: skip
    assert book.violations() == []


def test_request_hold_timeouts_asks_only_for_open_holds_past_their_timeout(book: Book) -> None:
    user = book.user()
    book.record_and_apply(earn(user, 100))
    with book.accepting() as accept:
        times_out = accept.now() + timedelta(milliseconds=200)
        due = accept(hold(user, 10, times_out))
        captured = accept(hold(user, 10, times_out))
        accept(capture(user, captured))
        released = accept(hold(user, 10, times_out))
        accept(release(user, released))
        accept(hold(user, 10, times_out + timedelta(hours=1)))
        accept(hold(user, 10))  # held until told
    assert set(book.apply().values()) == {COMPLETED}
    book.wait_until(times_out)
    # A hold past its timeout but not applied yet is not a hold yet.
    (pending,) = book.record(hold(user, 10, book.now() - timedelta(minutes=1)))

    account_id = book.account(user).id
    assert book.ask_timeouts() == [account_id]
    assert [r.related_id for r in book.requests(Operation.TIMEOUT)] == [str(due)]
    assert book.ask_timeouts() == []
    assert set(book.apply().values()) == {COMPLETED}
    assert book.hold(due).status == HoldStatus.TIMED_OUT

    # Applied, the late hold is open past its timeout: asked once.
    assert book.ask_timeouts() == [account_id]
    assert book.ask_timeouts() == []
    timeouts = book.requests(Operation.TIMEOUT)
    assert [r.related_id for r in timeouts] == [str(due), str(pending)]
    assert book.apply() == {timeouts[-1].id: COMPLETED}
    assert totals(book.account(user))["frozen"] == 20
    assert book.violations() == []


# Points coming into an account below zero: once a product bug (442b8fc), whose entry
# broke the CHECK balance_not_negative and so the whole chunk, each time it was applied.


@pytest.mark.parametrize("undo", [False, True], ids=["award", "reversal-of-a-spend"])
def test_points_coming_into_an_account_below_zero_are_applied(book: Book, undo: bool) -> None:
    user, bystander = book.user(), book.user()
    _, small, _ = book.record_and_apply(earn(user, 10), spend(user, 5), spend(user, 20, force=True))
    assert book.account(user).balance == -15

    coming_in, other = book.record(
        reversal(user, book.entry(small)) if undo else earn(user, 5), earn(bystander, 1)
    )
    # Points coming in are applied (before 442b8fc they were refused: insufficient_balance),
    # and another account's request in the chunk with them.
    outcomes = book.apply()
    assert outcomes[coming_in] == COMPLETED
    assert book.account(user).balance == -10
    assert outcomes[other] == COMPLETED
    assert book.violations() == []
