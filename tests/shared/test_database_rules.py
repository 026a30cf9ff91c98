"""The database's own guards: the ledger is immutable, and check constraints refuse bad rows.

They hold whatever the code does (a bug, a hand-written fix in psql): each bad row is
refused by the constraint named for it, while the valid row it was made from is
accepted. Everything runs in one transaction rolled back at the end, each attempt in a
savepoint of its own.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.ledger.reconcile import reconcile
from shared.models import new_ulid


def insert(session: Session, table: str, values: dict[str, Any]) -> Any:
    columns = ", ".join(values)
    params = ", ".join(f":{name}" for name in values)
    statement = f"INSERT INTO {table} ({columns}) VALUES ({params}) RETURNING *"
    return session.execute(text(statement), values).one()


@dataclass
class Rows:
    """A tenant, a user with a points account of 100, its request and ledger entry."""

    session: Session
    tenant: str
    user: int
    account: str
    entry_ulid: str

    def request(self, **values: Any) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant, "fingerprint": "f" * 64, "account_id": self.account,
            "user_id": self.user, "amount": 5, "entry_type": "adjust", "reputation_context": "",
            "comment": "", "reason": "", "source": "", "related_id": "", "allow_negative": False,
            "created_by": self.user, "status": "queued", "attempts": 0,
        } | values  # fmt: skip

    def request_id(self, **values: Any) -> int:
        return insert(self.session, "adjustment_requests", self.request(**values)).id

    def entry(self, **values: Any) -> dict[str, Any]:
        return {
            "ulid": new_ulid(), "tenant_id": self.tenant, "account_id": self.account,
            "points_type": "points", "request_id": self.request_id(status="completed"),
            "amount": 5, "balance_before": 100, "balance_after": 105, "negative_allowed": False,
            "type": "adjust", "reputation_type": 10, "reputation_context": "", "comment": "",
            "reason": "", "source": "", "related_id": "", "created_by": self.user,
        } | values  # fmt: skip

    def lot(self, **values: Any) -> dict[str, Any]:
        return {
            "entry_ulid": self.entry_ulid, "tenant_id": self.tenant, "account_id": self.account,
            "amount": 100, "remaining": 100, "expires_at": "2030-01-01T00:00:00Z",
        } | values  # fmt: skip

    def hold(self, **values: Any) -> dict[str, Any]:
        return {
            "request_id": self.request_id(entry_type="hold", amount=10),
            "tenant_id": self.tenant, "account_id": self.account, "amount": 10, "captured": 0,
            "status": "open",
        } | values  # fmt: skip


@pytest.fixture
def rows(scratch_session: Session) -> Iterator[Rows]:
    session = scratch_session
    tenant = "t_" + secrets.token_hex(6)
    session.execute(text("INSERT INTO tenants (id, name) VALUES (:t, :t)"), {"t": tenant})
    user = insert(session, "users", {"tenant_id": tenant, "username": "ann", "real_name": "",
                                     "email": "", "avatar": "", "description": "",
                                     "role": "user"}).id  # fmt: skip
    account = insert(session, "accounts", {
        "id": new_ulid(), "tenant_id": tenant, "user_id": user, "points_type": "points",
        "allow_negative": False, "balance": 100, "frozen_balance": 0, "expired_points": 0,
        "total_earned": 100, "total_spent": 0, "exchange_rate": 100, "status": "active",
        "version": 1,
    }).id  # fmt: skip
    made = Rows(session, tenant, user, account, "")
    first = made.entry(amount=100, balance_before=0, balance_after=100)
    made.entry_ulid = insert(session, "ledger_entries", first).ulid
    yield made


def refused_by(session: Session, statement: str, values: dict[str, Any] | None = None) -> str:
    """The constraint (or, for a trigger, the message) that refuses the statement."""
    with pytest.raises(sqlalchemy.exc.IntegrityError) as raised, session.begin_nested():
        session.execute(text(statement), values or {})
    diagnostics = raised.value.orig.diag  # type: ignore[union-attr]
    return diagnostics.constraint_name or diagnostics.message_primary


def accepted(session: Session, table: str, values: dict[str, Any]) -> None:
    with session.begin_nested() as savepoint:
        insert(session, table, values)
        savepoint.rollback()


def refused_insert(session: Session, table: str, values: dict[str, Any]) -> str:
    columns = ", ".join(values)
    params = ", ".join(f":{name}" for name in values)
    return refused_by(session, f"INSERT INTO {table} ({columns}) VALUES ({params})", values)


# Invariant 5: the ledger is append-only.


@pytest.mark.parametrize(
    ("statement", "operation"),
    [
        ("UPDATE ledger_entries SET amount = amount + 1 WHERE ulid = :ulid", "UPDATE"),
        ("UPDATE ledger_entries SET comment = 'edited' WHERE ulid = :ulid", "UPDATE"),
        ("DELETE FROM ledger_entries WHERE ulid = :ulid", "DELETE"),
        ("TRUNCATE ledger_entries CASCADE", "TRUNCATE"),
    ],
)
def test_ledger_entries_cannot_be_changed_or_removed(
    rows: Rows, statement: str, operation: str
) -> None:
    message = refused_by(rows.session, statement, {"ulid": rows.entry_ulid})
    assert message == f"ledger entries are immutable: {operation} refused"
    count = "SELECT COUNT(*) FROM ledger_entries WHERE ulid = :ulid"
    assert rows.session.execute(text(count), {"ulid": rows.entry_ulid}).scalar_one() == 1


# Ledger entries: the arithmetic of every entry, no negative balance unless allowed.

ENTRY_CASES = {
    "balance_arithmetic": [{"balance_after": 106}, {"balance_before": 99}],
    "balance_not_negative": [{"balance_before": 0, "amount": -5, "balance_after": -5}],
    "type_known": [{"type": "gift"}, {"type": "timeout"}],  # a timeout writes a release
}


@pytest.mark.parametrize(
    ("constraint", "bad"),
    [(name, bad) for name, cases in ENTRY_CASES.items() for bad in cases],
)
def test_bad_ledger_entries_are_refused(rows: Rows, constraint: str, bad: dict) -> None:
    accepted(rows.session, "ledger_entries", rows.entry())
    assert refused_insert(rows.session, "ledger_entries", rows.entry(**bad)) == constraint


def test_a_negative_balance_is_kept_where_it_was_allowed(rows: Rows) -> None:
    negative = {"balance_before": 0, "amount": -5, "balance_after": -5, "negative_allowed": True}
    accepted(rows.session, "ledger_entries", rows.entry(**negative))


# Requests: the amount each operation carries.

REQUEST_CASES = {
    "amount_fits_type": [
        {"entry_type": "adjust", "amount": 0},
        {"entry_type": "reversal", "amount": 0},
        {"entry_type": "hold", "amount": 0},
        {"entry_type": "hold", "amount": -1},
        {"entry_type": "capture", "amount": -1},
        {"entry_type": "release", "amount": 5},
        {"entry_type": "timeout", "amount": 1},
        {"entry_type": "expire", "amount": -3},
    ],
    "entry_type_known": [{"entry_type": "gift", "amount": 0}],
    "status_known": [{"status": "done"}],
}
GOOD_REQUESTS = [
    {"entry_type": "adjust", "amount": -5},
    {"entry_type": "reversal", "amount": 5},
    {"entry_type": "hold", "amount": 1},
    {"entry_type": "capture", "amount": 0},  # the whole hold
    {"entry_type": "release", "amount": 0},
    {"entry_type": "timeout", "amount": 0},
    {"entry_type": "expire", "amount": 0},
]


@pytest.mark.parametrize(
    ("constraint", "bad"),
    [(name, bad) for name, cases in REQUEST_CASES.items() for bad in cases],
)
def test_bad_requests_are_refused(rows: Rows, constraint: str, bad: dict) -> None:
    assert refused_insert(rows.session, "adjustment_requests", rows.request(**bad)) == constraint


@pytest.mark.parametrize("good", GOOD_REQUESTS, ids=lambda good: good["entry_type"])
def test_each_operation_with_its_amount_is_accepted(rows: Rows, good: dict) -> None:
    accepted(rows.session, "adjustment_requests", rows.request(**good))


# Accounts: held points within the balance, expired points never negative.


@pytest.mark.parametrize(
    ("constraint", "change"),
    [
        ("frozen_within_balance", "frozen_balance = -1"),
        ("frozen_within_balance", "frozen_balance = 101"),
        ("expired_not_negative", "expired_points = -1"),
        ("status_known", "status = 'closed'"),
    ],
)
def test_bad_account_states_are_refused(rows: Rows, constraint: str, change: str) -> None:
    statement = f"UPDATE accounts SET {change} WHERE id = :id"
    assert refused_by(rows.session, statement, {"id": rows.account}) == constraint


def test_held_points_may_exceed_the_balance_only_where_negatives_are_allowed(rows: Rows) -> None:
    with rows.session.begin_nested() as savepoint:
        rows.session.execute(
            text("UPDATE accounts SET frozen_balance = 100 WHERE id = :id"), {"id": rows.account}
        )
        savepoint.rollback()
    statement = "UPDATE accounts SET allow_negative = true, frozen_balance = 101 WHERE id = :id"
    with rows.session.begin_nested() as savepoint:
        rows.session.execute(text(statement), {"id": rows.account})
        savepoint.rollback()


# Lots and holds.

LOT_CASES = {
    "amount_positive": [{"amount": 0, "remaining": 0}],
    # Below zero is an overdraft (its earn reversed while some of it was spent), within -amount.
    "remaining_within_amount": [{"remaining": 101}, {"remaining": -101}],
    "expired_once": [
        {"expired_at": "2030-01-01T00:00:00Z", "expired_amount": 100},  # with points left
        {"expired_at": "2030-01-01T00:00:00Z", "remaining": 5, "expired_amount": 0},
        {"expired_amount": 0, "remaining": 0},  # an amount without its time
        {"expired_at": "2030-01-01T00:00:00Z", "remaining": 0, "expired_amount": 101},
    ],
}


@pytest.mark.parametrize(
    ("constraint", "bad"), [(name, bad) for name, cases in LOT_CASES.items() for bad in cases]
)
def test_bad_lots_are_refused(rows: Rows, constraint: str, bad: dict) -> None:
    accepted(rows.session, "lots", rows.lot())
    accepted(rows.session, "lots", rows.lot(remaining=-100))
    expired = {"remaining": 0, "expired_at": "2030-01-01T00:00:00Z", "expired_amount": 4}
    accepted(rows.session, "lots", rows.lot(**expired))
    accepted(rows.session, "lots", rows.lot(**(expired | {"remaining": -30})))
    assert refused_insert(rows.session, "lots", rows.lot(**bad)) == constraint


def test_an_expiry_time_without_its_amount_is_refused(rows: Rows) -> None:
    bad = rows.lot(remaining=0, expired_at="2030-01-01T00:00:00Z")
    assert refused_insert(rows.session, "lots", bad) == "expired_once"


HOLD_CASES = {
    "amount_positive": [{"amount": 0}],
    "status_known": [{"status": "lost", "closed_by": "closer"}],
    "captured_within_amount": [
        {"status": "captured", "captured": 0, "closed_by": "closer"},
        {"status": "open", "captured": 5},
        {"status": "captured", "captured": 11, "closed_by": "closer"},
    ],
    "closed_once": [{"status": "released"}, {"status": "open", "closed_by": "closer"}],
}


@pytest.mark.parametrize(
    ("constraint", "bad"), [(name, bad) for name, cases in HOLD_CASES.items() for bad in cases]
)
def test_bad_holds_are_refused(rows: Rows, constraint: str, bad: dict) -> None:
    def closer() -> int:
        return rows.request_id(entry_type="release", amount=0)

    accepted(rows.session, "holds", rows.hold())
    accepted(rows.session, "holds", rows.hold(status="captured", captured=10, closed_by=closer()))
    values = {name: closer() if value == "closer" else value for name, value in bad.items()}
    assert refused_insert(rows.session, "holds", rows.hold(**values)) == constraint


def test_reconcile_reports_an_expiry_time_without_its_amount(rows: Rows) -> None:
    """What the check refuses (above), invariant 8 of `tally reconcile` names too, should a
    row get past it (the check dropped, as a hand-made repair might)."""

    def violations(lot: dict[str, Any]) -> list[tuple[int, str]]:
        with rows.session.begin_nested() as savepoint:
            rows.session.execute(text("ALTER TABLE lots DROP CONSTRAINT expired_once"))
            insert(rows.session, "lots", lot)
            # Its one move: the earn put in what is left (invariant 8 sums a lot's moves).
            if lot["remaining"]:
                move = {"entry_ulid": rows.entry_ulid, "lot_ulid": rows.entry_ulid,
                        "delta": lot["remaining"], "expired": 0}  # fmt: skip
                insert(rows.session, "lot_moves", move)
            found = reconcile(rows.session).violations
            savepoint.rollback()
        return [(v.invariant, v.check) for v in found if rows.entry_ulid in v.subject]

    assert violations(rows.lot()) == []  # the lot of the account's one entry, all left
    assert violations(rows.lot(remaining=0, expired_at="2030-01-01T00:00:00Z")) == [(8, "lot")]
