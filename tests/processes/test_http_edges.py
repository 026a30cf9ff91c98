"""The real server under hostile or careless clients: slow heads, huge heads, big bodies, waiters;
and a long answer, streamed.

Each test runs against `tally api` (two processes) as deployed, because what it
checks lives in the HTTP server and the process limits, not in the Flask app.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from sqlalchemy.orm import Session, sessionmaker

from cli.embedded import free_port
from shared.intake.adjustments import Adjustment
from shared.models import Role, User
from tests.conftest import Services
from tests.factories import Caller, Factory, count_rows, queue_adjustments
from tests.stack import Stack, wait_until_up

# A starved server answers after its 10-30 s timeouts, a live one within milliseconds;
# issue 9 asks for single requests to be answered within 1 s.
ANSWER_WITHIN = 1.0


def _address(stack: Stack) -> tuple[str, int]:
    parts = urlsplit(stack.base_url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def _timed(call) -> tuple[float, httpx.Response]:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    response = call()
    return time.monotonic() - started, response


def _health_and_a_write_answer_at_once(
    stack: Stack, moderator: Caller, user: User, comment: str
) -> None:
    """Three /healthz probes and an accepted POST, each answered within ANSWER_WITHIN."""
    with httpx.Client(base_url=stack.base_url, timeout=10) as http:
        for _ in range(3):
            elapsed, health = _timed(lambda: http.get("/healthz"))
            assert health.status_code == 200 and elapsed < ANSWER_WITHIN, elapsed
        elapsed, posted = _timed(
            lambda: http.post(
                "/api/v2/score/",
                json={"user_id": user.id, "score": 1, "comment": comment},
                headers=moderator.headers | {"Prefer": "respond-async"},
            )
        )
    assert posted.status_code == 202 and elapsed < ANSWER_WITHIN, (posted.status_code, elapsed)


@pytest.fixture
def moderator(stack_factory: Factory) -> Caller:
    return stack_factory.caller(Role.MODERATOR)


class SlowHeads:
    """Connections that send a request line, then one header line every two seconds."""

    def __init__(self, address: tuple[str, int], count: int) -> None:
        self.sockets = [socket.create_connection(address) for _ in range(count)]
        for sock in self.sockets:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: tally\r\n")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        while not self._stop.wait(2.0):
            for sock in self.sockets:
                with contextlib.suppress(OSError):  # the server may give up on it: allowed
                    sock.sendall(b"X-Slow: 1\r\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def slow_heads(stack_without_workers: Stack) -> Iterator[SlowHeads]:
    heads = SlowHeads(_address(stack_without_workers), 200)
    yield heads
    heads.close()


def test_two_hundred_slow_heads_leave_health_and_writes_answering(
    stack_without_workers: Stack, slow_heads: SlowHeads, moderator: Caller, stack_factory: Factory
) -> None:
    time.sleep(3)  # every slow connection has sent more than one header line by now
    _health_and_a_write_answer_at_once(
        stack_without_workers, moderator, stack_factory.user(), "through the crowd"
    )


def test_a_sixteen_megabyte_request_line_is_refused_at_once(stack_without_workers: Stack) -> None:
    started = time.monotonic()
    with socket.create_connection(_address(stack_without_workers), timeout=5) as sock:
        with contextlib.suppress(OSError):  # the server may close before it is all sent
            sock.sendall(b"GET /healthz?q=" + b"a" * (16 * 1024 * 1024) + b" HTTP/1.1\r\n\r\n")
        answer = sock.recv(100)
    assert answer.startswith(b"HTTP/1.1 431") or answer == b"", answer
    assert time.monotonic() - started < ANSWER_WITHIN
    assert httpx.get(stack_without_workers.base_url + "/healthz").status_code == 200


def _head_answer(stack: Stack, size: int) -> bytes:
    """The status line for a request whose head is `size` bytes."""
    start = b"GET /healthz HTTP/1.1\r\nHost: tally\r\nX-Pad: "
    head = start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"
    with socket.create_connection(_address(stack), timeout=5) as sock:
        with contextlib.suppress(OSError):  # the server may close before it is all sent
            sock.sendall(head)
        return sock.recv(12)


def test_heads_up_to_48_kib_are_served_and_larger_ones_refused(
    stack_without_workers: Stack,
) -> None:
    assert _head_answer(stack_without_workers, 47 * 1024) == b"HTTP/1.1 200"
    for size in (49 * 1024, 64 * 1024, 100 * 1024):
        assert _head_answer(stack_without_workers, size) == b"HTTP/1.1 431", size


def test_a_body_far_over_the_limit_gets_a_readable_413(
    stack_without_workers: Stack, moderator: Caller
) -> None:
    """A plain client posting 200 kB to a 64 kB route reads the 413 (no reset mid-send)."""
    body = b'{"comment": "' + b"x" * 200_000 + b'"}'
    for _ in range(3):
        response = httpx.post(
            stack_without_workers.base_url + "/api/v2/score/",
            content=body,
            headers=moderator.headers | {"Content-Type": "application/json"},
        )
        assert response.status_code == 413
        assert response.json()["type"].endswith("/content-too-large")


def _chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_chunked_bodies_over_their_limit_are_413_and_write_nothing(
    stack_without_workers: Stack,
    moderator: Caller,
    stack_factory: Factory,
    stack_sessions: sessionmaker[Session],
) -> None:
    user = stack_factory.user()
    form = f"user_id={user.id}&score=1&comment=".encode() + b"x" * (70 * 1024)
    with httpx.Client(base_url=stack_without_workers.base_url, timeout=30) as http:
        single = http.post(
            "/api/v2/score/",
            content=_chunks(form),
            headers=moderator.headers | {"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert single.status_code == 413
        line = b'{"user_id": %d, "score": 1, "comment": "%s"}\n' % (user.id, b"y" * 1000)
        huge = line * (70 * 1024)  # about 70 MB, over the bulk route's 64 MiB
        bulk = http.post(
            "/api/v2/score/bulk",
            content=_chunks(huge, 1 << 20),
            headers=moderator.headers
            | {"Content-Type": "application/x-ndjson", "Idempotency-Key": "huge"},
        )
        assert bulk.status_code == 413
    with stack_sessions() as session:
        assert count_rows(session, stack_factory.tenant_id) == (0, 0)


def test_waiters_past_the_cap_answer_202_at_once_and_health_stays_up(
    stack_without_workers: Stack, moderator: Caller, stack_factory: Factory
) -> None:
    """64 clients ask to wait 30 s while no worker runs: the capped waiters must not starve."""
    users = [stack_factory.user() for _ in range(8)]

    def post(number: int) -> tuple[float, int]:
        with httpx.Client(base_url=stack_without_workers.base_url, timeout=60) as http:
            response = http.post(
                "/api/v2/score/",
                json={"user_id": users[number % 8].id, "score": 1, "comment": f"w{number}"},
                headers=moderator.headers | {"Prefer": "wait=30"},
            )
            return time.monotonic(), response.status_code

    with ThreadPoolExecutor(max_workers=64) as pool:
        futures = [pool.submit(post, number) for number in range(64)]
        time.sleep(3)
        with httpx.Client(base_url=stack_without_workers.base_url, timeout=10) as http:
            for _ in range(3):
                elapsed, health = _timed(lambda: http.get("/healthz"))
                assert health.status_code == 200 and elapsed < ANSWER_WITHIN, elapsed
        # Until a worker runs, no waiter can be answered before its 30 s: whoever was
        # answered by now was answered 202 without waiting.
        worker_started = time.monotonic()
        stack_without_workers.start_worker("worker1")
        results = [future.result() for future in futures]
    unwaited = [status for finished, status in results if finished < worker_started]
    # Two processes with 12 waiters each: the other 40 are answered 202 at once.
    assert len(unwaited) >= 64 - 2 * 12, sorted(results)
    assert set(unwaited) == {202}, unwaited
    assert all(status in (201, 202) for _, status in results), results


class SlowBodies:
    """Connections that send a whole head announcing 1,000 bytes, then one byte a second."""

    def __init__(self, address: tuple[str, int], count: int, headers: dict[str, str]) -> None:
        head = "POST /api/v2/score/ HTTP/1.1\r\nHost: tally\r\nContent-Length: 1000\r\n"
        head += "Content-Type: application/json\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        self.sockets = [socket.create_connection(address) for _ in range(count)]
        for sock in self.sockets:
            sock.sendall(head.encode() + b"{")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        while not self._stop.wait(1.0):
            for sock in self.sockets:
                with contextlib.suppress(OSError):  # the server gave up on it: expected
                    sock.sendall(b" ")

    def answers(self) -> list[bytes]:
        """What each connection was answered (b"" if nothing within 5 s)."""
        self._stop.set()
        self._thread.join()
        answers = []
        for sock in self.sockets:
            sock.settimeout(5)
            try:
                answers.append(sock.recv(200))
            except OSError:
                answers.append(b"")
            sock.close()
        return answers


def test_two_hundred_slow_bodies_leave_health_and_writes_answering_then_get_408(
    stack_without_workers: Stack, moderator: Caller, stack_factory: Factory
) -> None:
    started = time.monotonic()
    bodies = SlowBodies(_address(stack_without_workers), 200, moderator.headers)
    time.sleep(3)  # every slow body has sent a few bytes by now
    _health_and_a_write_answer_at_once(
        stack_without_workers, moderator, stack_factory.user(), "past the slow bodies"
    )
    # A body that has not arrived 10 s (plus a second per 16 KiB received) after its
    # head is answered 408, and its connection closed.
    time.sleep(max(0.0, started + 13 - time.monotonic()))
    answers = bodies.answers()
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), set(answers)
    assert all(b"connection: close" in answer.lower() for answer in answers)


def test_a_413_says_that_it_closes_the_connection(
    stack_without_workers: Stack, moderator: Caller
) -> None:
    response = httpx.post(
        stack_without_workers.base_url + "/api/v2/score/",
        content=b'{"comment": "' + b"x" * 200_000 + b'"}',
        headers=moderator.headers | {"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["Connection"] == "close"


@pytest.mark.parametrize(
    "stack_env", [{"TALLY_MAX_REQUESTS_PER_ADDRESS": "20", "TALLY_API_PROCESSES": "1"}]
)
def test_one_address_may_have_only_so_many_requests_in_flight(
    stack_without_workers: Stack, moderator: Caller
) -> None:
    # One process: the cap is per process, and the kernel need not spread connections
    # evenly over two (CI once put so few on one that it still had room).
    bodies = SlowBodies(_address(stack_without_workers), 25, moderator.headers)
    time.sleep(1)
    with httpx.Client(base_url=stack_without_workers.base_url, timeout=10) as http:
        refused = [http.get("/healthz").status_code for _ in range(4)]
    answers = bodies.answers()
    assert sum(answer.startswith(b"HTTP/1.1 429") for answer in answers) >= 5, answers
    assert 429 in refused, refused
    metrics = httpx.get(stack_without_workers.base_url + "/metrics").text
    assert 'route="front",status="429"' in metrics


def test_idle_connections_past_the_soft_descriptor_limit_leave_the_server_answering(
    services: Services, tmp_path: Path
) -> None:
    """Started under `ulimit -Sn 100`, the API raises its limit: 120 idle connections pass."""
    port = free_port()
    env = os.environ | {
        "TALLY_DATABASE_URL": services.database_url,
        "TALLY_REDIS_URL": services.redis_url,
        "TALLY_API_PROCESSES": "2",
    }
    stack = Stack(f"http://127.0.0.1:{port}", env, {}, tmp_path)
    stack.start(
        "api", "api", "--bind", f"127.0.0.1:{port}", wrapper=("prlimit", "--nofile=100:4096")
    )
    try:
        wait_until_up(stack)
        for pid in psutil.Process(stack.processes["api"].pid).children(recursive=True):
            assert pid.rlimit(psutil.RLIMIT_NOFILE) == (4096, 4096)
        idle = [socket.create_connection(_address(stack)) for _ in range(120)]
        time.sleep(1)
        with httpx.Client(base_url=stack.base_url, timeout=10) as http:
            for _ in range(5):
                elapsed, ready = _timed(lambda: http.get("/readyz"))
                assert ready.status_code == 200 and elapsed < ANSWER_WITHIN, elapsed
        for sock in idle:
            sock.close()
        assert "Too many open files" not in stack.logs()
    finally:
        stack.stop("api")


def test_a_long_export_is_streamed_in_chunks_and_arrives_whole(
    stack: Stack, stack_factory: Factory, stack_sessions: sessionmaker[Session]
) -> None:
    """An export longer than the front's WHOLE_ANSWER_BYTES goes out as granian's chunked
    stream while it is read, not gathered into one body first (which held a whole ledger
    in the API's memory)."""
    admin = stack_factory.caller(Role.ADMIN)
    users = [stack_factory.user() for _ in range(4)]
    count = 1000  # about 430 bytes a row: some 430 kB, over the front's 256 KiB
    queue_adjustments(stack_sessions, admin, [
        Adjustment(user_id=users[n % 4].id, points_type="points", amount=1, reason=f"r{n}")
        for n in range(count)
    ])  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        with stack_sessions() as session:
            if count_rows(session, stack_factory.tenant_id)[1] == count:
                break
        assert time.monotonic() < deadline, "the workers did not apply the adjustments"
        time.sleep(0.2)

    url = stack.base_url + "/api/v2/export"
    with httpx.stream("GET", url, params={"format": "ndjson"}, headers=admin.headers) as answer:
        assert answer.status_code == 200
        assert answer.headers.get("transfer-encoding") == "chunked", answer.headers
        assert "content-length" not in answer.headers
        rows = [json.loads(line) for line in answer.iter_lines() if line]
    assert len(rows) == count
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)
    assert sorted(row["reason"] for row in rows) == sorted(f"r{n}" for n in range(count))
