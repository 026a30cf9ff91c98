"""An executable reference model of the points rules in docs/points.md, for one account.

Written apart from shared.ledger.points on purpose (plain dictionaries, its own names, its own
order of reasoning), so that a test comparing the two catches a rule that either gets
wrong. Times are integers on the model's clock; requests are keyed by their request id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FREE = "free"
COMPLETED = "completed"
SYSTEM = frozenset({"expire", "timeout"})


@dataclass
class Lot:
    key: int  # the earning request's id
    amount: int
    remaining: int
    expires: tuple[int, int]  # (time, order of creation): the order lots are used in
    expired: int | None = None


@dataclass
class Hold:
    amount: int
    timeout: tuple[int, int] | None
    parts: dict[object, int]
    status: str = "open"


@dataclass
class Request:
    id: int
    op: str  # adjust, hold, capture, release, timeout, expire, reversal
    amount: int = 0
    forced: bool = False
    expires: tuple[int, int] | None = None
    subject: int | None = None  # the hold, the lot (its earn), the reversed request
    accepted_at: int = 0


@dataclass
class Done:
    """What an applied request did, as much as a later reversal needs."""

    kind: str  # earn, spend, capture, other
    amount: int  # the points it moved, before any expired
    parts: dict[object, int] = field(default_factory=dict)  # what it took or kept, by source


class PointsModel:
    """One account: apply requests in order, each giving "completed" or a rejection code."""

    def __init__(self, allow_negative: bool) -> None:
        self.allow_negative = allow_negative
        self.frozen_status = False
        self.balance = self.held = self.earned = self.spent = self.expired = 0
        self.lots: dict[int, Lot] = {}
        self.holds: dict[int, Hold] = {}
        self.done: dict[int, Done] = {}

    # What the account looks like.

    def totals(self) -> dict[str, int]:
        return {
            "balance": self.balance, "frozen": self.held, "earned": self.earned,
            "spent": self.spent, "expired": self.expired,
        }  # fmt: skip

    def lot_states(self) -> dict[int, tuple[int, int | None]]:
        return {key: (lot.remaining, lot.expired) for key, lot in self.lots.items()}

    def never_expiring(self) -> int:
        return self.balance - self.held - sum(lot.remaining for lot in self.lots.values())

    def due_lots(self, now: int) -> list[int]:
        """The lots whose time has come and whose expiry has not been applied, in order."""
        due = [lot for lot in self.lots.values() if lot.expired is None and lot.expires[0] <= now]
        return [lot.key for lot in sorted(due, key=lambda lot: lot.expires)]

    def due_holds(self, now: int) -> list[int]:
        due = [
            (hold.timeout, key)
            for key, hold in self.holds.items()
            if hold.status == "open" and hold.timeout is not None and hold.timeout[0] <= now
        ]
        return [key for _, key in sorted(due)]

    # The rules.

    def _book(self, moved: int, expired: int = 0, held: int = 0) -> None:
        """`moved` points in (+, earned) or out (-, spent), and `expired` points gone."""
        self.balance += moved - expired
        self.held += held
        self.expired += expired
        if moved > 0:
            self.earned += moved
        else:
            self.spent -= moved

    def _may_take(self, points: int, forced: bool) -> bool:
        if self.allow_negative:
            return True
        if forced:
            return self.held == 0 or self.balance - points >= self.held
        return self.balance - self.held >= points

    def _ordered_lots(self) -> list[Lot]:
        return sorted(self.lots.values(), key=lambda lot: lot.expires)

    def _take(self, points: int) -> dict[object, int]:
        taken: dict[object, int] = {}
        for lot in self._ordered_lots():
            if points and lot.remaining > 0:
                part = min(points, lot.remaining)
                lot.remaining -= part
                taken[lot.key] = part
                points -= part
        if points:
            taken[FREE] = points
        return taken

    def _give_back(self, parts: dict[object, int]) -> int:
        """Points back to their lots; how many expired (those of expired lots, past any debt)."""
        expired = 0
        for source, points in parts.items():
            if source == FREE:
                continue
            lot = self.lots[source]  # type: ignore[index]
            if lot.expired is None:
                lot.remaining += points
                continue
            owed = max(-lot.remaining, 0)
            lot.remaining += min(owed, points)
            lot.expired += points - min(owed, points)
            expired += points - min(owed, points)
        return expired

    def apply(self, request: Request) -> str:
        if self.frozen_status and request.op not in SYSTEM:
            return "account_frozen"
        return getattr(self, "_" + request.op)(request)

    def _adjust(self, request: Request) -> str:
        if request.amount > 0:
            if request.expires is not None:
                self.lots[request.id] = Lot(
                    request.id, request.amount, request.amount, request.expires
                )
            self.done[request.id] = Done("earn", request.amount)
            self._book(request.amount)
            return COMPLETED
        points = -request.amount
        if not self._may_take(points, request.forced):
            return "insufficient_balance"
        self.done[request.id] = Done("spend", points, self._take(points))
        self._book(-points)
        return COMPLETED

    def _hold(self, request: Request) -> str:
        if not self._may_take(request.amount, False):
            return "insufficient_balance"
        parts = self._take(request.amount)
        self.holds[request.id] = Hold(request.amount, request.expires, parts)
        self._book(0, held=request.amount)
        return COMPLETED

    def _closable(self, request: Request) -> Hold | str:
        hold = self.holds.get(request.subject or 0)
        if hold is None or hold.status != "open":
            return "hold_not_open"
        if (request.op != "timeout" and hold.timeout is not None
                and hold.timeout[0] <= request.accepted_at):  # fmt: skip
            return "hold_expired"
        return hold

    def _capture(self, request: Request) -> str:
        hold = self._closable(request)
        if isinstance(hold, str):
            return hold
        wanted = request.amount or hold.amount
        if wanted > hold.amount:
            return "capture_exceeds_hold"
        kept: dict[object, int] = {}
        back: dict[object, int] = {}
        order = sorted((s for s in hold.parts if s != FREE), key=lambda s: self.lots[s].expires)  # type: ignore[index]
        rest = wanted
        for source in [*order, FREE]:
            if source not in hold.parts:
                continue
            used = min(rest, hold.parts[source])
            rest -= used
            kept[source] = used
            back[source] = hold.parts[source] - used
        hold.status = "captured"
        expired = self._give_back(back)
        self.done[request.id] = Done("capture", wanted, kept)
        self._book(-wanted, expired, -hold.amount)
        return COMPLETED

    def _release(self, request: Request, status: str = "released") -> str:
        hold = self._closable(request)
        if isinstance(hold, str):
            return hold
        hold.status = status
        expired = self._give_back(hold.parts)
        self._book(0, expired, -hold.amount)
        return COMPLETED

    def _timeout(self, request: Request) -> str:
        return self._release(request, "timed_out")

    def _expire(self, request: Request) -> str:
        lot = self.lots[request.subject or 0]
        if lot.expired is not None:
            return "nothing_to_expire"
        lot.expired = 0
        if lot.remaining <= 0:
            return "nothing_to_expire"
        owed_free = max(-self.never_expiring(), 0)
        left = lot.remaining
        lot.remaining = 0
        for debtor in self._ordered_lots():
            if debtor.remaining < 0:
                repaid = min(left, -debtor.remaining)
                debtor.remaining += repaid
                left -= repaid
        left -= min(left, owed_free)
        lot.expired = left
        self._book(0, left)
        return COMPLETED

    def _reversal(self, request: Request) -> str:
        done = self.done[request.subject or 0]
        if done.kind == "earn":
            lot = self.lots.get(request.subject or 0)
            points = done.amount if lot is None else lot.amount - (lot.expired or 0)
            if points == 0:
                return "already_expired"
            if not self._may_take(points, request.forced):
                return "insufficient_balance"
            if lot is not None:
                lot.remaining -= points
            self._book(-points)
            return COMPLETED
        expired = self._give_back(done.parts)
        self._book(done.amount, expired)
        return COMPLETED
