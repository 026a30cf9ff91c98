"""Probes of the HA suite: one adjustment of the rig's quiet user, posted as a careful
client does, to tell when service is back after a fault."""

from __future__ import annotations

import secrets
import time
from typing import Any

import requests

from tests.ha.conftest import HaRig

# How long a probe keeps trying before the test gives up on the cluster.
PROBE_LIMIT = 60.0


def post(rig: HaRig, key: str, timeout: float) -> requests.Response | None:
    """One adjustment of the quiet user, answered at once; None: no answer in time."""
    try:
        return requests.post(
            rig.stack.base_url + "/api/v2/score/",
            json={"user_id": rig.quiet_user_id, "score": 1, "comment": key},
            headers={
                "Authorization": f"Bearer {rig.caller.token}",
                "Prefer": "respond-async",
                "Idempotency-Key": key,
            },
            timeout=timeout,
        )
    except requests.RequestException:
        return None


def first_adjustment(rig: HaRig, since: float, evidence: dict[str, Any]) -> float:
    """Post one new adjustment, answered at once (`respond-async`) and retried with its
    key as a careful client does, until it is accepted; then follow it until it is
    applied. Seconds from `since` to each go into `evidence`; returns those to applied."""
    key = "probe-" + secrets.token_hex(4)
    deadline = time.monotonic() + PROBE_LIMIT
    location = None
    while location is None:
        assert time.monotonic() < deadline, f"nothing accepted {PROBE_LIMIT:.0f} s after the fault"
        # Room for a try that reaches a silent host first (2 s) and then the primary: a
        # shorter timeout would cut off tries that succeed.
        answer = post(rig, key, timeout=5)
        # 201: a replay of a try whose answer was lost, and which is applied since.
        if answer is not None and answer.status_code in (201, 202):
            location = answer.headers["Location"]
            evidence["probes"] = {key: int(location.rsplit("/", 1)[1])}
            evidence["first_accepted_after_s"] = round(time.monotonic() - since, 1)
        else:
            time.sleep(0.2)
    while True:
        assert time.monotonic() < deadline, f"nothing applied {PROBE_LIMIT:.0f} s after the fault"
        try:
            answer = requests.get(
                rig.stack.base_url + location,
                headers={"Authorization": f"Bearer {rig.caller.token}"},
                timeout=2,
            )
            status = answer.json().get("status")
        except (requests.RequestException, ValueError):
            status = None
        if status == "completed":
            applied = time.monotonic() - since
            evidence["first_applied_after_s"] = round(applied, 1)
            return applied
        time.sleep(0.1)
