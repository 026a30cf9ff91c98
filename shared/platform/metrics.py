"""Prometheus metrics of the API and the worker, correct across processes.

Each process group (the API's processes; one worker and its pool) has a folder of
its own in PROMETHEUS_MULTIPROC_DIR, made by `tally api` / `tally worker` before
anything imports prometheus_client; each of its processes writes its samples there
and the group serves their sum on its own /metrics (the API on its port, a worker
on TALLY_METRICS_BIND). Folders are never shared between groups or containers:
Prometheus scrapes every group and adds them up. Gauges about the backlog are read
at scrape time from Redis and PostgreSQL, so they are right whoever serves them,
and a source that does not answer leaves its gauges out instead of failing the scrape.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import TypeVar

import psutil
import sqlalchemy.exc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from shared.flow.backlog import Outbox
from shared.platform.config import GROUP_ROOT_FILE, METRICS_FOLDER_ENV

log = logging.getLogger(__name__)
T = TypeVar("T")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

HTTP_REQUESTS = Counter(
    "tally_http_requests_total", "HTTP requests answered", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "tally_http_request_duration_seconds",
    "From the request reaching Flask to its answer, by route",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
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
RELAY_RUNS = Counter("tally_relay_runs_total", "Runs of the outbox relay")
ACCOUNTS_PARKED = Counter(
    "tally_accounts_parked_total",
    "Accounts a drain task left alone for a while: their requests failed to apply for good",
)
RELAY_ACCOUNTS = Counter(
    "tally_relay_accounts_total",
    "Accounts the relay handed to the workers again (their requests waited past the delay)",
    ["lane"],
)
STREAM_EVENTS = Counter(
    "tally_stream_events_total",
    "Events NATS JetStream acknowledged (duplicates it dropped included)",
)
STREAM_FAILURES = Counter(
    "tally_stream_failures_total",
    "Runs of the NATS stream that stopped short: NATS unreachable or an event not acknowledged",
)
WEBHOOK_ATTEMPTS = Counter(
    "tally_webhook_attempts_total",
    "Webhook deliveries attempted, by what became of them: delivered (a 2xx), retried "
    "(to be tried again) or failed (past the retry window, or the event gone)",
    ["outcome"],
)
WEBHOOK_ENDPOINTS_DISABLED = Counter(
    "tally_webhook_endpoints_disabled_total",
    "Webhook endpoints tally disabled after failing past TALLY_WEBHOOK_DISABLE_AFTER_HOURS",
)

# Which process group counts each series. A group serves only its own, so that the API
# never shows a worker's series at 0, nor a worker the API's: every process that imports
# this module writes a 0 for each series without labels.
API_SERIES: tuple[MetricWrapperBase, ...] = (HTTP_REQUESTS, HTTP_LATENCY, ADJUSTMENTS_ACCEPTED)
WORKER_SERIES: tuple[MetricWrapperBase, ...] = (
    ADJUSTMENTS_APPLIED,
    ADJUSTMENTS_REJECTED,
    APPLY_LATENCY,
    LOCK_WAIT,
    TASK_RETRIES,
    RELAY_RUNS,
    RELAY_ACCOUNTS,
    STREAM_EVENTS,
    STREAM_FAILURES,
    WEBHOOK_ATTEMPTS,
    WEBHOOK_ENDPOINTS_DISABLED,
)
# A source of the backlog gauges that may be down while the scrape goes on.
SOURCE_ERRORS: dict[str, tuple[type[Exception], ...]] = {
    "postgresql": (sqlalchemy.exc.SQLAlchemyError,),
    "redis": (RedisError, OSError),
}


class BacklogCollector(Collector):
    """Scrape-time gauges: queue depth, outbox backlog and the oldest pending age.

    `tally_backlog_source_up{source}` says whether Redis and PostgreSQL answered; the
    gauges of a source that did not are absent from that scrape.
    """

    def __init__(self, depths: Callable[[], dict[str, int]], backlog: Callable[[], Outbox]):
        self.depths = depths
        self.backlog = backlog

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "tally_backlog_source_up",
            "1 if the source of the backlog gauges answered this scrape",
            labels=["source"],
        )
        depths = self._read("redis", self.depths, up)
        if depths is not None:
            depth = GaugeMetricFamily("tally_queue_depth", "Messages waiting", labels=["queue"])
            for queue, count in depths.items():
                depth.add_metric([queue], count)
            yield depth
        outbox = self._read("postgresql", self.backlog, up)
        if outbox is not None:
            yield GaugeMetricFamily(
                "tally_outbox_backlog", "Requests accepted, not yet final", value=outbox.pending
            )
            yield GaugeMetricFamily(
                "tally_outbox_oldest_age_seconds",
                "Age of the oldest pending request",
                value=outbox.oldest_age_seconds,
            )
            yield GaugeMetricFamily(
                "tally_ledger_partitions_ahead_seconds",
                "Time until the ledger's last partition ends (entries after it are refused)",
                value=outbox.partitions_ahead_seconds,
            )
        yield up

    @staticmethod
    def _read(source: str, read: Callable[[], T], up: GaugeMetricFamily) -> T | None:
        try:
            value = read()
        except SOURCE_ERRORS[source] as error:
            log.warning("metrics: %s did not answer: %s", source, error)
            up.add_metric([source], 0)
            return None
        up.add_metric([source], 1)
        return value


class BuildInfo(Collector):
    """`tally_build_info{version, python} 1`: what runs, for dashboards and upgrades."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "tally_build_info",
            "tally's version and Python's; always 1",
            labels=["version", "python"],
        )
        family.add_metric([metadata.version("tally"), platform.python_version()], 1)
        yield family


class Owned(Collector):
    """Of the families `source` collects, those of `series` only."""

    def __init__(self, source: Collector, series: Iterable[MetricWrapperBase]) -> None:
        self.source = source
        self.names = {family.name for metric in series for family in metric.describe()}

    def collect(self) -> Iterator[Metric]:
        return (family for family in self.source.collect() if family.name in self.names)


class GroupProcesses(Collector):
    """CPU, memory and open files of the process group at scrape time: the process that
    started it (an API's server, a worker's main process) and all its descendants (the
    API's processes, the worker's pool), summed. A pool process that was replaced takes
    its CPU seconds with it, so the counter may fall; rate() reads that as a reset."""

    def collect(self) -> Iterator[Metric]:
        root = psutil.Process(group_root())
        cpu = memory = files = 0.0
        members = 0
        for member in [root, *root.children(recursive=True)]:
            try:
                with member.oneshot():
                    times = member.cpu_times()
                    cpu += times.user + times.system
                    memory += member.memory_info().rss
                    files += member.num_fds()
            except psutil.NoSuchProcess:  # ended since it was listed
                continue
            members += 1
        yield CounterMetricFamily(
            "process_cpu_seconds", "User and system CPU of the group's processes", value=cpu
        )
        yield GaugeMetricFamily(
            "process_resident_memory_bytes", "Resident memory of the group's processes",
            value=memory,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "process_open_fds", "Open file descriptors of the group's processes", value=files
        )
        yield GaugeMetricFamily(
            "process_start_time_seconds", "When the group's first process started (Unix time)",
            value=root.create_time(),
        )  # fmt: skip
        yield GaugeMetricFamily("tally_group_processes", "Processes in the group", value=members)


def group_root() -> int:
    """The pid of this process group's first process (the one that made its metrics
    folder), or this process's own when it has no folder."""
    folder = os.environ.get(METRICS_FOLDER_ENV)
    if folder:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(Path(folder, GROUP_ROOT_FILE).read_text())
    return os.getpid()


def group_registry(series: Iterable[MetricWrapperBase]) -> CollectorRegistry:
    """What a process group serves: its `series` (the sum of its metrics folder, else
    this process's own), its processes' CPU and memory, and the build."""
    folder = os.environ.get(METRICS_FOLDER_ENV)
    samples = MultiProcessCollector(None) if folder else REGISTRY  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    for collector in (Owned(samples, series), GroupProcesses(), BuildInfo()):
        registry.register(collector)
    return registry


def render(series: Iterable[MetricWrapperBase], *extra: Collector) -> bytes:
    """The exposition text: the group's, then that of `extra` collectors."""
    output = generate_latest(group_registry(series))
    if extra:
        registry = CollectorRegistry()
        for collector in extra:
            registry.register(collector)
        output += generate_latest(registry)
    return output
