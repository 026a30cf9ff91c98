"""Lot expiries and hold timeouts from beat, with real processes, while clients keep going.

Ten "points" accounts each get points that expire in a few seconds and a hold that
times out in two, while four client threads keep adjusting (some spends refused for
want of points), placing short holds and capturing or releasing them. Beat runs the
timers every half second. Once every lot and every hold is due and every request is
final, the ledger must show each lot expired at most once and never beyond what it
had, holds timed out, nothing left frozen, and `tally reconcile` healthy.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Role
from tests.factories import Factory
from tests.processes.conftest import Stack

pytestmark = pytest.mark.processes

USERS = 10
CLIENTS = 4
LOAD_SECONDS = 7.0
# The longest a lot or a hold placed under load lives; the wait after the load covers it.
LONGEST_TIMER = 3.0
SETTLE_LIMIT = 20.0


@pytest.fixture
def stack_env() -> dict[str, str]:
    # Beat asks for the due expiries and timeouts every half second (60 s by default).
    return {"TALLY_EXPIRY_INTERVAL": "0.5"}


@dataclass(frozen=True)
class Answer:
    kind: str  # adjust, hold, capture, release
    user_id: int
    status: int
    request_id: int | None


@dataclass
class PointsClient:
    base_url: str
    token: str
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def post(
        self,
        http: requests.Session,
        kind: str,
        user_id: int,
        path: str,
        body: dict,
        prefer: str = "wait=5",
    ) -> Answer:
        response = http.post(
            f"{self.base_url}/admin/points/{user_id}{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.token}", "Prefer": prefer},
            timeout=30,
        )
        location = response.headers.get("Location")
        request_id = int(location.rsplit("/", 1)[1]) if location else None
        answer = Answer(kind, user_id, response.status_code, request_id)
        with self._lock:
            self.answers.append(answer)
        return answer

    def adjust(
        self, http: requests.Session, user_id: int, amount: int, expires_in: float | None = None
    ) -> Answer:
        body: dict = {"amount": amount, "reason": "timers"}
        if expires_in is not None:
            body["expires_at"] = _in(expires_in)
        return self.post(http, "adjust", user_id, "/adjust", body)

    def hold(self, http: requests.Session, user_id: int, amount: int, expires_in: float) -> Answer:
        body = {"amount": amount, "expires_at": _in(expires_in), "reason": "timers"}
        return self.post(http, "hold", user_id, "/holds", body)


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def _seed(client: PointsClient, user_ids: list[int]) -> list[int]:
    """60 points for good, lot A (40, 2 s) spent whole at once, lot B (30, 5 s), a hold of
    20 for 2 s left to time out; the request ids of the lots A."""
    lots_spent: list[int] = []
    with requests.Session() as http:
        for user_id in user_ids:
            assert client.adjust(http, user_id, 60).status == 201
            lot_a = client.post(
                http, "adjust", user_id, "/adjust", {"amount": 40, "expires_at": _in(2.0)}
            )
            assert lot_a.status == 201
            assert lot_a.request_id is not None
            lots_spent.append(lot_a.request_id)
            assert client.adjust(http, user_id, 30, expires_in=5.0).status == 201
            # Spends take the first lot to expire first: all of lot A and 5 of lot B.
            assert client.adjust(http, user_id, -45).status == 201
            assert client.hold(http, user_id, 20, expires_in=2.0).status == 201
    return lots_spent


def _load(client: PointsClient, user_ids: list[int], seconds: float) -> list[str]:
    """CLIENTS threads of mixed operations for `seconds`; any answer other than 201/202/409."""
    problems: list[str] = []
    stop = time.monotonic() + seconds

    def run(number: int) -> None:
        rng = random.Random(number)
        own_holds: list[tuple[int, int, int]] = []  # (user, hold id, amount)
        with requests.Session() as http:
            while time.monotonic() < stop:
                user_id = rng.choice(user_ids)
                roll = rng.random()
                if roll < 0.35:
                    expires = rng.uniform(1.0, LONGEST_TIMER) if rng.random() < 0.6 else None
                    answer = client.adjust(http, user_id, rng.randint(5, 30), expires)
                elif roll < 0.65:
                    # Now and then far more than any account has: refused.
                    amount = rng.randint(300, 900) if rng.random() < 0.15 else rng.randint(1, 25)
                    answer = client.adjust(http, user_id, -amount)
                elif roll < 0.82 or not own_holds:
                    amount = rng.randint(5, 40)
                    answer = client.hold(http, user_id, amount, rng.uniform(1.0, LONGEST_TIMER))
                    if answer.request_id is not None and answer.status in (201, 202):
                        own_holds.append((user_id, answer.request_id, amount))
                else:
                    held_by, hold_id, amount = own_holds.pop(rng.randrange(len(own_holds)))
                    if rng.random() < 0.5:
                        body = {"amount": rng.randint(1, amount)} if rng.random() < 0.5 else {}
                        answer = client.post(
                            http, "capture", held_by, f"/holds/{hold_id}/capture", body
                        )
                    else:
                        answer = client.post(
                            http,
                            "release",
                            held_by,
                            f"/holds/{hold_id}/release",
                            {},
                            prefer="respond-async",
                        )
                if answer.status not in (201, 202, 409) or answer.request_id is None:
                    problems.append(f"{answer}")
                time.sleep(rng.uniform(0.01, 0.05))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return problems


TENANT_STATE = text("""
    SELECT
        (SELECT COUNT(*) FROM adjustment_requests
         WHERE tenant_id = :tenant AND status IN ('queued', 'processing')) AS pending,
        (SELECT COUNT(*) FROM lots WHERE tenant_id = :tenant AND remaining > 0) AS live_lots,
        (SELECT COUNT(*) FROM holds WHERE tenant_id = :tenant AND status = 'open') AS open_holds,
        (SELECT MAX(expires_at) FROM lots WHERE tenant_id = :tenant) AS last_lot,
        (SELECT MAX(expires_at) FROM holds WHERE tenant_id = :tenant) AS last_hold
""")


def _wait_until_settled(sessions: sessionmaker[Session], tenant: str, stack: Stack) -> float:
    """Seconds until no request is pending, no lot has points left, no hold is open."""
    started = time.monotonic()
    while True:
        with sessions() as session:
            state = session.execute(TENANT_STATE, {"tenant": tenant}).one()
        if state.pending == state.live_lots == state.open_holds == 0:
            return time.monotonic() - started
        assert time.monotonic() - started < SETTLE_LIMIT, f"{state}\n{stack.logs()}"
        time.sleep(0.2)


def test_lots_expire_and_holds_time_out_under_load(
    stack: Stack, stack_factory: Factory, stack_sessions: sessionmaker[Session]
) -> None:
    tenant = stack_factory.tenant_id
    caller = stack_factory.caller(Role.MODERATOR)
    user_ids = [stack_factory.user().id for _ in range(USERS)]
    client = PointsClient(stack.base_url, caller.token)

    lots_spent = _seed(client, user_ids)
    problems = _load(client, user_ids, LOAD_SECONDS)
    assert problems == [], stack.logs()
    settled = _wait_until_settled(stack_sessions, tenant, stack)
    print(f"\n{len(client.answers)} operations, settled {settled:.1f} s after the load")

    with stack_sessions() as session:
        # The answers agree with the requests' final outcomes.
        outcome = dict(
            session.execute(
                text("SELECT id, status FROM adjustment_requests WHERE tenant_id = :tenant"),
                {"tenant": tenant},
            ).all()
        )
        for answer in client.answers:
            final = outcome[answer.request_id]
            expected = {201: {"completed"}, 202: {"completed", "rejected"}, 409: {"rejected"}}
            assert final in expected[answer.status], answer
        codes = Counter(
            session.scalars(
                text(
                    "SELECT error_code FROM adjustment_requests"
                    " WHERE tenant_id = :tenant AND status = 'rejected'"
                ),
                {"tenant": tenant},
            )
        )
        assert codes["insufficient_balance"] > 0, codes
        print(f"answers {Counter(a.status for a in client.answers)}, rejections {dict(codes)}")

        # Timers ran: points expired on some accounts, holds timed out.
        accounts = session.execute(
            text(
                "SELECT user_id, balance, frozen_balance, expired_points FROM accounts"
                " WHERE tenant_id = :tenant AND points_type = 'points'"
            ),
            {"tenant": tenant},
        ).all()
        assert len(accounts) == USERS
        assert sum(1 for a in accounts if a.expired_points > 0) > 0, accounts
        # Every hold is closed, so nothing is frozen any more.
        assert [a for a in accounts if a.frozen_balance != 0] == []
        holds = Counter(
            session.scalars(
                text("SELECT status FROM holds WHERE tenant_id = :tenant"), {"tenant": tenant}
            )
        )
        assert holds["timed_out"] >= USERS, holds  # at least the seeded holds
        assert holds["open"] == 0

        # A lot expires at most once, never before its time, never beyond its amount.
        lots = session.execute(
            text("""
                SELECT l.entry_ulid, l.amount, l.expires_at, l.expired_at, l.expired_amount,
                       COUNT(x.id) AS expiries,
                       -- its expiry's, and those of points given back to it after it
                       (SELECT COALESCE(SUM(m.expired), 0) FROM lot_moves m
                        WHERE m.lot_ulid = l.entry_ulid) AS expired,
                       MIN(x.created_at) AS first_expiry
                FROM lots l
                LEFT JOIN ledger_entries x ON x.type = 'expire' AND x.related_id = l.entry_ulid
                WHERE l.tenant_id = :tenant
                GROUP BY l.entry_ulid
            """),
            {"tenant": tenant},
        ).all()
        assert lots
        for lot in lots:
            assert lot.expiries <= 1, lot
            assert lot.expired <= lot.amount, lot
            if lot.expiries:
                assert lot.first_expiry >= lot.expires_at, lot
                assert lot.expired_amount == lot.expired, lot
        assert sum(1 for lot in lots if lot.expiries) > 0
        print(
            f"{len(lots)} lots, {sum(1 for lot in lots if lot.expiries)} expired, "
            f"{sum(a.expired_points for a in accounts)} points expired; holds {dict(holds)}"
        )
        asked_twice = session.execute(
            text("""
                SELECT entry_type, related_id, COUNT(*) FROM adjustment_requests
                WHERE tenant_id = :tenant AND entry_type IN ('expire', 'timeout')
                  AND status <> 'rejected'
                GROUP BY entry_type, related_id HAVING COUNT(*) > 1
            """),
            {"tenant": tenant},
        ).all()
        assert asked_twice == []

        # Each seeded lot A was spent whole before it was due: asked once all the same (so
        # that points given back to it later expire), with nothing to expire.
        spent = session.execute(
            text("""
                SELECT e.request_id, l.remaining, l.expired_amount,
                       (SELECT COUNT(*) FROM adjustment_requests x
                        WHERE x.entry_type = 'expire' AND x.related_id = l.entry_ulid
                          AND x.error_code = 'nothing_to_expire') AS asked
                FROM lots l JOIN ledger_entries e ON e.ulid = l.entry_ulid
                WHERE e.request_id = ANY(:ids)
            """),
            {"ids": lots_spent},
        ).all()
        assert len(spent) == USERS
        assert all((s.remaining, s.expired_amount, s.asked) == (0, 0, 1) for s in spent), spent

        # Timeouts only after the hold's time; captures and releases only accepted before it.
        late = session.execute(
            text("""
                SELECT h.request_id, h.status, h.expires_at, c.entry_type, c.created_at,
                       h.closed_at
                FROM holds h JOIN adjustment_requests c ON c.id = h.closed_by
                WHERE h.tenant_id = :tenant
                  AND ((c.entry_type = 'timeout') <> (h.status = 'timed_out')
                       OR (c.entry_type = 'timeout' AND c.created_at < h.expires_at)
                       OR (c.entry_type <> 'timeout' AND c.created_at >= h.expires_at))
            """),
            {"tenant": tenant},
        ).all()
        assert late == []

    result = subprocess.run(
        [sys.executable, "-m", "cli", "reconcile", "--json"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["violations"] == []
