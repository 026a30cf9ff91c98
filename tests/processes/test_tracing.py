"""Tracing on a real stack: one adjustment is one trace, from the API's request to the
worker's task and the SQL of both, received over OTLP/HTTP by a collector in the test."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cli.embedded import free_port
from shared.models import AdjustmentRequest, AdjustmentStatus, Role
from tests.factories import Factory
from tests.stack import Stack

pytestmark = pytest.mark.processes

SQLALCHEMY_SCOPE = "opentelemetry.instrumentation.sqlalchemy"
PSYCOPG_SCOPE = "opentelemetry.instrumentation.psycopg"
DRAIN_RUN = "run/tally.drain"
PUBLISHED_BY_WORKER = ("tally-worker", "apply_async/tally.drain")
# One request per transaction, so that a backlog of one account's keeps a drain task
# busy past its second (DRAIN_SECONDS) and it queues its successor.
APPLY_CHUNK = 1
BACKLOG = 400


@dataclass(frozen=True)
class Span:
    """One span as the collector received it."""

    service: str
    scope: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, str]


class Collector:
    """An OTLP/HTTP trace receiver on 127.0.0.1: POST /v1/traces, protobuf bodies."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.server.daemon_threads = True

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                collector.add(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        return Handler

    def add(self, export: ExportTraceServiceRequest) -> None:
        spans = [
            Span(
                service=_service_name(resource_spans.resource.attributes),
                scope=scope_spans.scope.name,
                name=span.name,
                kind=span.kind,
                trace_id=span.trace_id.hex(),
                span_id=span.span_id.hex(),
                parent_id=span.parent_span_id.hex(),
                attributes={
                    a.key: str(getattr(a.value, a.value.WhichOneof("value")))
                    for a in span.attributes
                },
            )
            for resource_spans in export.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self.lock:
            self.spans.extend(spans)

    def wait_for(self, found: Callable[[list[Span]], bool], timeout: float = 30) -> list[Span]:
        """The spans received, once `found` holds of them."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                spans = list(self.spans)
            if found(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)


def _service_name(attributes: Any) -> str:
    return next((a.value.string_value for a in attributes if a.key == "service.name"), "")


@pytest.fixture
def collector() -> Iterator[Collector]:
    collector = Collector()
    thread = threading.Thread(target=collector.server.serve_forever, daemon=True)
    thread.start()
    yield collector
    collector.server.shutdown()
    collector.server.server_close()


@pytest.fixture
def stack_env(collector: Collector) -> dict[str, str]:
    """Every process of the stack exports its spans to the test's collector, at once."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "TALLY_APPLY_CHUNK": str(APPLY_CHUNK),
    }


def _is_request(span: Span) -> bool:
    return span.service == "tally-api" and span.kind == SpanMessage.SPAN_KIND_SERVER


def _task_runs(spans: list[Span], trace_id: str) -> list[Span]:
    return [
        span
        for span in spans
        if span.trace_id == trace_id and span.service == "tally-worker" and span.name == DRAIN_RUN
    ]


def _ancestry(span: Span, spans: list[Span]) -> list[Span]:
    """`span` and its parents, as far as the received spans go."""
    by_id = {s.span_id: s for s in spans}
    chain = [span]
    while chain[-1].parent_id in by_id:
        chain.append(by_id[chain[-1].parent_id])
    return chain


def test_the_task_an_adjustment_queued_runs_in_the_trace_of_its_request(
    stack: Stack, stack_factory: Factory, collector: Collector
) -> None:
    caller = stack_factory.caller(Role.MODERATOR)
    user = stack_factory.user()
    response = requests.post(
        stack.base_url + "/api/v2/score/",
        json={"user_id": user.id, "score": 5, "comment": "traced"},
        headers=caller.headers | {"Prefer": "wait=10"},
        timeout=30,
    )
    assert response.status_code == 201, response.text

    spans = collector.wait_for(lambda spans: any(map(_is_request, spans)))
    requests_ = [span for span in spans if _is_request(span)]
    assert [span.name for span in requests_] == ["POST /api/v2/score/"], stack.logs()
    request = requests_[0]
    spans = collector.wait_for(lambda spans: bool(_task_runs(spans, request.trace_id)))
    runs = _task_runs(spans, request.trace_id)
    assert len(runs) == 1, (request, spans)
    chain = _ancestry(runs[0], spans)
    assert [(s.service, s.name) for s in chain] == [
        ("tally-worker", DRAIN_RUN),
        ("tally-api", "apply_async/tally.drain"),
        ("tally-api", "POST /api/v2/score/"),
    ], chain

    # The SQL of both sides, in the same trace: SQLAlchemy's spans and psycopg's below them.
    under_task = [s for s in spans if runs[0] in _ancestry(s, spans)[1:]]
    under_request = [s for s in spans if request in _ancestry(s, spans)[1:]]
    assert {SQLALCHEMY_SCOPE, PSYCOPG_SCOPE} <= {s.scope for s in under_task}, under_task
    assert {SQLALCHEMY_SCOPE, PSYCOPG_SCOPE} <= {s.scope for s in under_request}, under_request
    # The request's span opens before the rate limits look the token up.
    statements = [s.attributes.get("db.statement", "") for s in under_request]
    assert any("JOIN tokens" in statement for statement in statements), statements


def test_a_drain_task_out_of_time_queues_its_successor_in_a_trace_of_its_own(
    stack_without_workers: Stack,
    stack_factory: Factory,
    stack_sessions: sessionmaker[Session],
    collector: Collector,
) -> None:
    stack = stack_without_workers
    caller = stack_factory.caller(Role.MODERATOR)
    user = stack_factory.user()
    with requests.Session() as http:
        for n in range(BACKLOG):
            response = http.post(
                stack.base_url + "/api/v2/score/",
                json={"user_id": user.id, "score": 1, "comment": f"n{n}"},
                headers=caller.headers | {"Prefer": "respond-async"},
                timeout=30,
            )
            assert response.status_code == 202, response.text
    stack.start_worker("worker1")
    deadline = time.monotonic() + 90
    while _completed(stack_sessions, stack_factory.tenant_id) < BACKLOG:
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.2)

    def successors(spans: list[Span]) -> list[list[Span]]:
        """The ancestry of every drain run that a drain task queued: one a worker published
        at the root of a trace, or within a drain's run (not within the relay's)."""
        chains = [_ancestry(s, spans) for s in spans if s.name == DRAIN_RUN]
        return [
            chain
            for chain in chains
            if chain[1:2]
            and (chain[1].service, chain[1].name) == PUBLISHED_BY_WORKER
            and (len(chain) == 2 or chain[2].name == DRAIN_RUN)
        ]

    found = collector.wait_for(lambda spans: bool(successors(spans)))
    chains = successors(found)
    assert chains, "no drain task queued its successor"
    # Each starts a trace of its own: no drain run above it.
    assert all(len(chain) == 2 for chain in chains), [[s.name for s in c] for c in chains]


def _completed(sessions: sessionmaker[Session], tenant_id: str) -> int:
    with sessions() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(AdjustmentRequest)
                .where(
                    AdjustmentRequest.tenant_id == tenant_id,
                    AdjustmentRequest.status == AdjustmentStatus.COMPLETED,
                )
            )
            or 0
        )
