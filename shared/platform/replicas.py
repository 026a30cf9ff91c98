"""Read replicas for the routes that only read (TALLY_READ_DATABASE_URL), within a bound
on how far behind the primary they may be (TALLY_READ_MAX_LAG).

How far behind: at most once a second a process notes the primary's WAL position with
the time, and reads how far each replica has replayed. A replica that has replayed what
the primary had written at time t holds every commit made before t, so it is behind by
at most now - t: the time of the latest noted position it has reached (0 when it has
reached the one just noted). That holds whether the primary is busy or idle, which a
replica's last replay timestamp does not tell (on an idle primary it only grows old).

Every read that decides money (balance checks, idempotency, holds: the accept path and
the worker) uses the primary and never comes here.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from dataclasses import dataclass

from sqlalchemy import Engine, text

from shared.platform.db import autocommit

# At most once a second per process: a choice is made from a cached reading.
CHECK_INTERVAL = 1.0

PRIMARY_POSITION = text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
# NULL on a server that is not replaying (a primary, say one promoted meanwhile).
REPLAYED_POSITION = text("SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn")


@dataclass(frozen=True)
class ReadTarget:
    """Where a read goes, and how many seconds behind the primary it may be (0: the
    primary itself)."""

    engine: Engine
    lag: float


class ReadReplicas:
    """This process's choice of a replica fresh enough for a read, else the primary."""

    def __init__(
        self,
        primary: Engine,
        replicas: list[Engine],
        max_lag: float,
        interval: float = CHECK_INTERVAL,
    ) -> None:
        self.primary = primary
        self.replicas = replicas
        self.max_lag = max_lag
        self.interval = interval
        self._lock = threading.Lock()
        self._measuring = threading.Lock()
        self._read_at = float("-inf")
        # (monotonic time, primary WAL position), oldest first, back to max_lag ago.
        self._positions: deque[tuple[float, int]] = deque()
        self._lags: list[float] = [float("inf")] * len(replicas)

    def choose(self) -> ReadTarget:
        """A replica within max_lag (at random among them), else the primary."""
        now = time.monotonic()
        # One thread measures; the others go on with the last reading meanwhile (a replica
        # that does not answer holds only the measuring read, for a connect timeout).
        if now - self._read_at >= self.interval and self._measuring.acquire(blocking=False):
            try:
                lags = self._measure(now)
                with self._lock:
                    self._lags, self._read_at = lags, now
            finally:
                self._measuring.release()
        with self._lock:
            # The reading's own age counts against the bound.
            age = time.monotonic() - self._read_at
            fresh = [
                ReadTarget(engine, lag + age)
                for engine, lag in zip(self.replicas, self._lags, strict=True)
                if lag + age <= self.max_lag
            ]
        return random.choice(fresh) if fresh else ReadTarget(self.primary, 0.0)

    def lags(self) -> list[float]:
        """Each replica's lag at the last reading (inf: unusable)."""
        with self._lock:
            return list(self._lags)

    def _measure(self, now: float) -> list[float]:
        try:
            with autocommit(self.primary) as connection:
                position = int(connection.scalar(PRIMARY_POSITION))
        except Exception:  # the primary's own outage is reported as such elsewhere
            return [float("inf")] * len(self.replicas)
        self._positions.append((now, position))
        # Positions older than the bound judge no replica usable: drop them.
        while len(self._positions) > 1 and self._positions[0][0] < now - self.max_lag - 1:
            self._positions.popleft()
        return [self._lag(replica, now) for replica in self.replicas]

    def _lag(self, replica: Engine, now: float) -> float:
        try:
            with autocommit(replica) as connection:
                replayed = connection.scalar(REPLAYED_POSITION)
        except Exception:  # a replica that does not answer is not used
            return float("inf")
        if replayed is None:
            return float("inf")
        reached = [at for at, position in self._positions if position <= int(replayed)]
        return now - reached[-1] if reached else float("inf")
