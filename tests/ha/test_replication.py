"""No acknowledgement before a synchronous standby has the request, and a 503 (not a
wait without end) while there is no standby at all (TALLY_REPLICATION=required)."""

from __future__ import annotations

import os
import secrets
import signal
import time

import psutil
import pytest
import requests

from tests.ha.conftest import HaRig
from tests.ha.hosts import Host
from tests.ha.probes import first_adjustment, post

pytestmark = pytest.mark.ha

# How long the API may take to notice that no standby is left (its reading is at most
# a second old; Patroni's loop is a second).
NOTICE_LIMIT = 5.0


def walreceiver(host: Host) -> psutil.Process:
    """The standby's WAL receiver: it writes what the primary sends and confirms it."""
    for pid in host.pids():
        try:
            process = psutil.Process(pid)
            if "walreceiver" in " ".join(process.cmdline()):
                return process
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no walreceiver on {host.name}")


def test_a_commit_is_answered_only_once_the_synchronous_standby_has_it(ha_rig: HaRig) -> None:
    """The synchronous standby stops confirming (its WAL receiver frozen, still connected,
    so Patroni and the API see nothing wrong): a new adjustment gets no 2xx while it is
    frozen, and its answer (the same key) once it goes on."""
    cluster = ha_rig.ha
    receiver = walreceiver(cluster.wait_sync_standby())
    key = "sync-" + secrets.token_hex(4)
    os.kill(receiver.pid, signal.SIGSTOP)
    try:
        answer = post(ha_rig, key, timeout=4)
        assert answer is None or answer.status_code >= 500, (
            f"acknowledged before the standby confirmed: {answer.status_code} {answer.text}"
        )
    finally:
        os.kill(receiver.pid, signal.SIGCONT)
    answer = post(ha_rig, key, timeout=10)
    assert answer is not None and answer.status_code == 202, answer


@pytest.mark.ha_long
def test_with_no_standby_left_writes_answer_503_and_resume_when_one_is_back(
    ha_rig: HaRig,
) -> None:
    """Both standby hosts die: the primary stays, but in Patroni's strict synchronous
    mode its commits would wait for a standby. tally answers writes 503 at once
    (replication_unavailable) and /readyz says why, until a standby streams again."""
    cluster = ha_rig.ha
    primary = cluster.primary()
    standbys = [host for host in cluster.databases if host is not primary]
    for host in standbys:
        host.kill()
    gone = time.monotonic()
    refused = None
    while refused is None:
        assert time.monotonic() - gone < NOTICE_LIMIT, "writes still not refused"
        answer = post(ha_rig, "gone-" + secrets.token_hex(4), timeout=2)
        assert answer is None or answer.status_code not in (201, 202), (
            "acknowledged with no standby left"
        )
        if answer is not None and answer.status_code == 503:
            refused, refused_after = answer, time.monotonic() - gone
    assert refused.json()["code"] == "replication_unavailable"
    assert refused.headers["Retry-After"]
    ready = requests.get(ha_rig.stack.base_url + "/readyz", timeout=5)
    assert ready.status_code == 503
    assert "standby" in ready.json()["checks"]["replication"]

    for host in standbys:
        cluster.start_patroni(host)
    back = time.monotonic()
    evidence: dict = {}
    first_adjustment(ha_rig, back, evidence)
    print(f"\nno standby: writes refused {refused_after:.1f} s after; back: {evidence}")
    # Ready again within the same bound as the loss was noticed in: each API process
    # reads the standbys at most once a second, and the one answering /readyz may not
    # be the one that took the probe.
    back = time.monotonic()
    while (ready := requests.get(ha_rig.stack.base_url + "/readyz", timeout=5)).status_code != 200:
        assert time.monotonic() - back < NOTICE_LIMIT, ready.text
        time.sleep(0.2)
