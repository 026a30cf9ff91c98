"""What one webhook delivery costs the sender: CPU and wall time per delivery of
`WebhookSender.send_round` to a loopback receiver (bench/receiver.py, a process of its
own, so that its CPU is not counted), no database.

Each round sends WINDOW deliveries as the sender's rounds do: accounts' queues side by
side on its threads, each queue in order. The events are `entry.created` with the
payload the ledger writes. Run it on two commits to compare HTTP clients.

`--latency-ms` makes each answer wait (a receiver across a network), which bounds an
endpoint's rate by its sender threads (`--threads`, TALLY_WEBHOOK_SENDER_THREADS).

Usage: python bench/webhook_sender.py [--deliveries 12000] [--accounts 50]
                                      [--latency-ms 0] [--threads 16]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime

from common import aligned, calibration_ms  # bench/common.py, beside this script
from receiver import Receiver

from cli.embedded import free_port
from shared.events.log import Event
from shared.events.webhook_sender import WINDOW, Head, WebhookSender, as_queues
from shared.platform.config import Settings

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PAYLOAD = {
    "entry_id": 123456, "entry_ulid": "01JF0000000000000000000000", "request_id": 654321,
    "type": "manual", "amount": 5, "frozen_amount": 0, "expired": 0, "balance_before": 100,
    "balance_after": 105, "user_id": "usr_42", "points_type": "points",
    "reputation_context": "answer_accepted", "comment": "bench", "reason": None,
    "source": "api", "related_id": None,
}  # fmt: skip


def rounds(deliveries: int, accounts: int) -> list[list[list[Head]]]:
    """The deliveries as rounds of WINDOW, each round's split into its accounts' queues."""
    at = datetime.now(UTC)
    heads = []
    for n in range(1, deliveries + 1):
        account = f"account-{n % accounts}"
        heads.append(
            (account, Head(n, 0, Event(n, n, "bench", account, "entry.created", at, PAYLOAD)))
        )
    return [as_queues(heads[start : start + WINDOW]) for start in range(0, deliveries, WINDOW)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=12_000)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    defaults = Settings()
    parser.add_argument("--threads", type=int, default=defaults.webhook_sender_threads)
    args = parser.parse_args()
    settings = defaults.with_overrides(
        {"webhook_allow_private": True, "webhook_sender_threads": args.threads}
    )
    sender = WebhookSender(settings, None, None)  # type: ignore[arg-type]  # no database
    receiver = Receiver(free_port(), args.latency_ms / 1000).start()
    try:
        work = rounds(args.deliveries, args.accounts)
        # Connections, threads and caches first.
        warm = len(sender.send_round(receiver.url, [SECRET], work[0]))
        cpu, wall, receiver_cpu = time.process_time(), time.perf_counter(), receiver.cpu_seconds()
        sent = sum(len(sender.send_round(receiver.url, [SECRET], queues)) for queues in work)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        receiver_cpu = receiver.cpu_seconds() - receiver_cpu
    finally:
        sender.close()
        arrived = receiver.stop()
    assert len(arrived) == warm + sent, "a delivery did not arrive"
    print(f"calibration (fixed CPU loop): {calibration_ms():.1f} ms")
    figures = {
        "threads": args.threads,
        "latency_ms": args.latency_ms,
        "deliveries": sent,
        "cpu_us_per_delivery": round(cpu / sent * 1e6, 1),
        "wall_us_per_delivery": round(wall / sent * 1e6, 1),
        "receiver_cpu_us_per_delivery": round(receiver_cpu / sent * 1e6, 1),
        "deliveries_per_s": round(sent / wall),
    }
    rows = [tuple(figures), tuple(str(value) for value in figures.values())]
    print(aligned(rows))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
