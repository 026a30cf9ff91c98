"""Faults that must land inside work: a worker's processes frozen inside a chunk's
transaction (the chaos suite's and the HA suite's)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import func, select, text

from shared.models import AdjustmentRequest
from tests.chaos.conftest import Rig

# How long a scenario may look for the moment its fault hits work.
AIM_LIMIT = 8.0


def pending_requests(rig: Rig) -> int:
    """The tenant's requests accepted and not yet final."""
    with rig.sessions() as session:
        return session.scalar(
            select(func.count()).where(
                AdjustmentRequest.tenant_id == rig.caller.tenant_id,
                AdjustmentRequest.status.in_(("queued", "processing")),
            )
        )


def process_group(rig: Rig, name: str) -> list[int]:
    """A process of the stack and every process it started (a worker and its pool)."""
    parent = psutil.Process(rig.stack.processes[name].pid)
    return [parent.pid, *(child.pid for child in parent.children(recursive=True))]


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        os.kill(pid, sig)


# Transactions that have locked account rows (FOR NO KEY UPDATE takes RowShareLock on the
# table): a chunk's, not the event pump's that the worker's main process runs beside.
IN_TRANSACTION = text("""
    SELECT COUNT(*) FROM pg_stat_activity a
    WHERE a.client_port = ANY(:ports) AND a.backend_xid IS NOT NULL
      AND EXISTS (SELECT 1 FROM pg_locks l
                  WHERE l.pid = a.pid AND l.relation = 'accounts'::regclass
                    AND l.mode = 'RowShareLock')
""")


def freeze_inside_a_chunk(rig: Rig, name: str, evidence: dict[str, Any]) -> list[int]:
    """SIGSTOP every process of worker `name` at a moment one of them is inside a chunk's
    transaction that has locked its account rows (it has a transaction id); retry until so.

    Returns the pids, stopped. Evidence: how many such transactions, and how many
    requests were pending then."""
    deadline = time.monotonic() + AIM_LIMIT
    tries = 0
    while True:
        tries += 1
        pids = process_group(rig, name)
        signal_all(pids, signal.SIGSTOP)
        ports = [port for pid in pids for port in local_ports_to(pid, rig.postgres.port)]
        with rig.sessions() as session:
            open_transactions = session.scalar(IN_TRANSACTION, {"ports": ports})
        if open_transactions:
            evidence["fault_at"] = time.monotonic()
            evidence["frozen_in_transaction"] = open_transactions
            evidence["pending"] = pending_requests(rig)
            evidence["tries"] = tries
            return pids
        signal_all(pids, signal.SIGCONT)
        assert time.monotonic() < deadline, f"{name} was never caught inside a chunk"
        time.sleep(0.02)


def local_ports_to(pid: int, remote_port: int) -> list[int]:
    """The local ports of `pid`'s TCP connections to `remote_port`, read from the
    process's own view of the network (/proc/PID/net/tcp: its network namespace, which
    psutil, reading the caller's, would miss for a process on another test host)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                ports.append(int(local.rsplit(":", 1)[1], 16))
    return ports
