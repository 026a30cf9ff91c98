"""Prometheus metrics of the API and the worker, correct across processes.

With PROMETHEUS_MULTIPROC_DIR set (one shared, empty folder for every process of
a host, as `tally run` and `tally api` arrange), each process writes its
samples there and /metrics aggregates them. Gauges about the backlog are read at
scrape time from Redis and PostgreSQL, so they are right whoever serves them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from shared.backlog import Outbox

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

HTTP_REQUESTS = Counter(
    "tally_http_requests_total", "HTTP requests answered", ["route", "method", "status"]
)
ADJUSTMENTS_ACCEPTED = Counter(
    "tally_adjustments_accepted_total", "Adjustment requests accepted (new rows)"
)
ADJUSTMENTS_APPLIED = Counter(
    "tally_adjustments_applied_total", "Adjustments applied to the ledger"
)
ADJUSTMENTS_REJECTED = Counter(
    "tally_adjustments_rejected_total", "Adjustments rejected by the worker", ["reason"]
)
APPLY_LATENCY = Histogram(
    "tally_adjustment_latency_seconds",
    "From acceptance to the commit of its ledger entry",
    buckets=LATENCY_BUCKETS,
)
LOCK_WAIT = Histogram(
    "tally_lock_wait_seconds", "Time a task waited for an account lock", buckets=LATENCY_BUCKETS
)
TASK_RETRIES = Counter("tally_task_retries_total", "Task retries after transient errors", ["error"])


class BacklogCollector(Collector):
    """Scrape-time gauges: queue depth, outbox backlog and the oldest pending age."""

    def __init__(self, depths: Callable[[], dict[str, int]], backlog: Callable[[], Outbox]):
        self.depths = depths
        self.backlog = backlog

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("tally_queue_depth", "Messages waiting", labels=["queue"])
        for queue, count in self.depths().items():
            depth.add_metric([queue], count)
        yield depth
        outbox = self.backlog()
        yield GaugeMetricFamily(
            "tally_outbox_backlog", "Requests accepted, not yet final", value=outbox.pending
        )
        yield GaugeMetricFamily(
            "tally_outbox_oldest_age_seconds",
            "Age of the oldest pending request",
            value=outbox.oldest_age_seconds,
        )


def render(backlog: Collector) -> bytes:
    """The exposition text: every process's samples plus the backlog gauges."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    output = generate_latest(registry)
    extra = CollectorRegistry()
    extra.register(backlog)
    return output + generate_latest(extra)
