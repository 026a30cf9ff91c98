"""The points rules of docs/points.md, on one account held in memory: where points come
from and where they go back to.

An account's balance is its never-expiring points, plus what is left in each of its lots
(points earned with an expiry), plus what its open holds hold. Points are taken from
the lots that expire first, then from the never-expiring points; points given back
(a release, the rest of a capture, the reversal of a spend or a capture) return to the
lots they were taken from, and those of a lot that has expired expire at once. Every
change of a lot is recorded as a move of the entry that made it (`Moves`), so that
the points an entry took can be given back exactly.

Nothing here reads or writes the database: `shared.ledger.apply` loads the state, asks these
functions for each request's entry in order, and writes the result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from shared.models import EntryType, HoldStatus

# The never-expiring points, as the source of a part (the lots are named by their ULID).
FREE = None
Source = str | None
Parts = dict[Source, int]


class Rejection:
    """Business rejection codes: final, stored on the request, answered as 409."""

    ACCOUNT_FROZEN = "account_frozen"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    HOLD_NOT_OPEN = "hold_not_open"
    HOLD_EXPIRED = "hold_expired"
    CAPTURE_EXCEEDS_HOLD = "capture_exceeds_hold"
    NOTHING_TO_EXPIRE = "nothing_to_expire"
    ALREADY_EXPIRED = "already_expired"
    CAP_REACHED = "cap_reached"


REJECTION_MESSAGES = {
    Rejection.ACCOUNT_FROZEN: "the account is frozen",
    Rejection.INSUFFICIENT_BALANCE: "the balance may not go below zero, nor below the points"
    " held, for this points type",
    Rejection.HOLD_NOT_OPEN: "the hold is not open (never placed, captured, released or timed out)",
    Rejection.HOLD_EXPIRED: "the hold had timed out when this request was accepted",
    Rejection.CAPTURE_EXCEEDS_HOLD: "a capture may not exceed its hold",
    Rejection.NOTHING_TO_EXPIRE: "nothing was left of the lot when it expired",
    Rejection.ALREADY_EXPIRED: "every point this reversal would take back has expired already",
    Rejection.CAP_REACHED: "the points type's cap for this period is reached (docs/periods.md)",
}


@dataclass
class Lot:
    ulid: str
    amount: int
    # Below zero: an overdraft (its earn was reversed while some of its points were out).
    remaining: int
    expires_at: datetime
    # None until its expiry is applied; then how many of its points expired.
    expired: int | None = None
    new: bool = False
    changed: bool = False

    @property
    def order(self) -> tuple[datetime, str]:
        """The order points are taken in: the first to expire first."""
        return self.expires_at, self.ulid


@dataclass
class Hold:
    request_id: int
    account_id: str
    amount: int
    expires_at: datetime | None
    # What it holds, by the lot the points came from (FREE: the never-expiring points).
    parts: Parts
    status: str = HoldStatus.OPEN
    captured: int = 0
    closed_by: int | None = None
    new: bool = False
    changed: bool = False


class Entry(NamedTuple):
    """A ledger entry decided in memory; the rest comes from its request in SQL."""

    type: str
    amount: int
    frozen_amount: int = 0
    # How many of `amount`'s points expired (an expiry, or points given back to an expired lot).
    expired: int = 0
    # What a cap took off the amount asked for, and what the entry counts towards the cap.
    cut: int = 0
    capped: int = 0

    @property
    def gross(self) -> int:
        """The points moved before any expired: earned if positive, spent if negative."""
        return self.amount + self.expired


class Moves:
    """One entry's changes to lots: per lot, the change of `remaining` and what expired."""

    def __init__(self) -> None:
        self.by_lot: dict[str, list[int]] = {}

    def add(self, lot: Lot, delta: int, expired: int = 0) -> None:
        lot.changed = True
        lot.remaining += delta
        if expired:
            lot.expired = (lot.expired or 0) + expired
        moved = self.by_lot.setdefault(lot.ulid, [0, 0])
        moved[0] += delta
        moved[1] += expired

    def items(self) -> Iterable[tuple[str, int, int]]:
        return ((lot, delta, expired) for lot, (delta, expired) in self.by_lot.items()
                if delta or expired)  # fmt: skip


@dataclass
class Account:
    id: str
    balance: int
    frozen_balance: int
    allow_negative: bool
    frozen: bool
    earned: int = 0
    spent: int = 0
    expired: int = 0
    changed: bool = False
    # Its lots with points left or owed, and those the chunk's requests name; loaded only
    # for chunks that take or give back points (bulk awards do neither).
    lots: dict[str, Lot] = field(default_factory=dict)

    def may_take(self, amount: int, forced: bool) -> bool:
        """Whether `amount` points may leave the account (a spend, a hold, a reversal)."""
        if self.allow_negative:
            return True
        if forced:  # below zero, but never below what is held
            return self.frozen_balance == 0 or self.balance - amount >= self.frozen_balance
        return self.balance - self.frozen_balance >= amount

    def free(self) -> int:
        """The never-expiring points (below zero: owed, after a forced spend or a reversal)."""
        return self.balance - self.frozen_balance - sum(lot.remaining for lot in self.lots.values())

    def book(self, entry: Entry) -> None:
        """Count an entry in the balance, frozen balance and totals."""
        self.changed = True
        self.balance += entry.amount
        self.frozen_balance += entry.frozen_amount
        self.expired += entry.expired
        if entry.gross > 0:
            self.earned += entry.gross
        else:
            self.spent -= entry.gross


def _in_order(lots: Iterable[Lot]) -> list[Lot]:
    return sorted(lots, key=lambda lot: lot.order)


def take(account: Account, amount: int, moves: Moves) -> Parts:
    """Take `amount` points from the lots that expire first, then from the never-expiring
    points (which may go below zero where allowed); what was taken from where."""
    parts: Parts = {}
    for lot in _in_order(lot for lot in account.lots.values() if lot.remaining > 0):
        if amount == 0:
            break
        taken = min(lot.remaining, amount)
        moves.add(lot, -taken)
        parts[lot.ulid] = taken
        amount -= taken
    if amount:
        parts[FREE] = amount
    return parts


def give_back(account: Account, parts: Parts, moves: Moves) -> int:
    """Return points to the lots they were taken from; how many of them expired.

    A lot's overdraft is repaid first; the rest goes back into it, or, if the lot has
    expired, expires at once. Points of the never-expiring kind simply return.
    """
    expired = 0
    for source, points in parts.items():
        if source is FREE or points == 0:
            continue
        lot = account.lots[source]
        if lot.expired is None:
            moves.add(lot, points)
            continue
        repaid = min(points, max(-lot.remaining, 0))
        moves.add(lot, repaid, points - repaid)
        expired += points - repaid
    return expired


def split(account: Account, parts: Parts, captured: int) -> tuple[Parts, Parts]:
    """A capture of `captured` of a hold's parts: (consumed, given back). The parts that
    expire first are consumed first, the never-expiring ones last."""
    consumed: Parts = {}
    rest: Parts = {}
    lots = [lot.ulid for lot in _in_order(account.lots[s] for s in parts if s is not FREE)]
    for source in [*lots, FREE] if FREE in parts else lots:
        points = parts[source]
        used = min(points, captured)
        captured -= used
        if used:
            consumed[source] = used
        if points - used:
            rest[source] = points - used
    return consumed, rest


def expire(account: Account, lot_ulid: str, moves: Moves) -> Entry | str:
    """A lot's expiry: what is left of it first repays what the account owes (overdrawn
    lots, the first to expire first, then never-expiring points below zero); the rest
    expires. The lot counts as expired from now on, even with nothing left."""
    lot = account.lots.get(lot_ulid)
    if lot is None or lot.expired is not None:
        return Rejection.NOTHING_TO_EXPIRE
    lot.expired, lot.changed = 0, True
    available = lot.remaining
    if available <= 0:
        return Rejection.NOTHING_TO_EXPIRE
    owed_free = max(-account.free(), 0)
    moves.add(lot, -available)
    for debtor in _in_order(other for other in account.lots.values() if other.remaining < 0):
        repaid = min(available, -debtor.remaining)
        moves.add(debtor, repaid)
        available -= repaid
    available -= min(available, owed_free)
    moves.add(lot, 0, available)
    return Entry(EntryType.EXPIRE, -available, expired=available)
