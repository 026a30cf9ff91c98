"""Whether a commit now reaches a synchronous standby before it returns (TALLY_REPLICATION).

With Patroni's synchronous mode the primary's `synchronous_standby_names` names the
standby, and every commit waits for it to have the WAL (synchronous_commit = on). So a
201 or 202, sent only after the commit, promises that two hosts have the request, as
long as a synchronous standby is streaming. When none is:

- strict mode (deploy/patroni/patroni.yml): commits wait until a standby is back. The
  API does not start them: under TALLY_REPLICATION=required every write answers 503 at
  once, and /readyz says why. A commit already waiting when the standby went stays
  unanswered (the client times out and retries its key); it is never acknowledged
  before the standby has it.
- otherwise Patroni empties `synchronous_standby_names` and commits go on, replicated
  later or never. Under TALLY_REPLICATION=preferred tally acknowledges them, and says
  so in /readyz and as tally_replication_synchronous 0.

Reading pg_stat_replication's sync_state needs the pg_monitor role (or a superuser).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import Engine, text

from shared.platform.db import autocommit

# At most once a second per process: the answer is a cached reading.
CHECK_INTERVAL = 1.0

SYNCHRONOUS_STANDBYS = text("""
    SELECT current_setting('synchronous_standby_names') AS names,
           (SELECT count(*) FROM pg_stat_replication
            WHERE sync_state IN ('sync', 'quorum') AND state = 'streaming') AS streaming
""")


class ReplicationWatch:
    """This process's reading of the primary's synchronous standbys, at most a second old."""

    def __init__(self, engine: Engine, mode: str, interval: float = CHECK_INTERVAL) -> None:
        self.engine = engine
        self.mode = mode
        self.interval = interval
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._problem: str | None = None

    @property
    def watched(self) -> bool:
        return self.mode != "none"

    def problem(self) -> str | None:
        """Why acknowledgements are not replicated now; None when they are (or not watched)."""
        if not self.watched:
            return None
        with self._lock:
            if time.monotonic() - self._read_at >= self.interval:
                self._problem = self._read()
                self._read_at = time.monotonic()
            return self._problem

    def _read(self) -> str | None:
        try:
            with autocommit(self.engine) as connection:
                state = connection.execute(SYNCHRONOUS_STANDBYS).one()
        except Exception as error:  # the database's own outage is reported as such elsewhere
            return f"cannot read the replication state: {type(error).__name__}"
        if not state.names:
            return "no synchronous standby is configured: commits are not replicated"
        if state.streaming == 0:
            return "no synchronous standby is streaming"
        return None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """tally_replication_synchronous: 1 while commits reach a synchronous standby."""
        if self.watched:
            yield GaugeMetricFamily(
                "tally_replication_synchronous",
                "1 while every commit reaches a synchronous standby before it returns",
                value=0 if self.problem() else 1,
            )
