"""Retries against real processes: one key per call, Retry-After, an API restarted mid-call."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker
from tally_client import Client, Retries, Submission, Unreachable

from cli.embedded import free_port
from shared.models import Role
from tests.factories import Factory, count_rows
from tests.stack import Stack, kill_group, wait_until_up

pytestmark = pytest.mark.processes

# Patient enough for an API restart, quick to notice it is back.
PATIENT = Retries(attempts=200, deadline=90.0, backoff=0.1, max_backoff=0.5)


class Recorder:
    """An httpx.Client whose every try is recorded: (time, method, Idempotency-Key); answers."""

    def __init__(self) -> None:
        self.tries: list[tuple[float, str, str | None]] = []
        self.answers: list[httpx.Response] = []
        self.http = httpx.Client(
            event_hooks={"request": [self._request], "response": [self.answers.append]}
        )

    def _request(self, request: httpx.Request) -> None:
        self.tries.append(
            (time.monotonic(), request.method, request.headers.get("Idempotency-Key"))
        )

    def keys(self) -> set[str | None]:
        """The keys that the POSTs carried."""
        return {key for _, method, key in self.tries if method == "POST"}


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    with recorder.http:
        yield recorder


def _until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _requests(sessions: sessionmaker[Session], factory: Factory) -> int:
    with sessions() as session:
        return count_rows(session, factory.tenant_id)[0]


def _restart_api(stack: Stack) -> None:
    stack.start("api", "api", "--bind", stack.base_url.removeprefix("http://"))
    wait_until_up(stack)


def test_a_call_keeps_its_key_across_an_api_restart_and_creates_one_entry(
    stack: Stack, stack_factory: Factory, stack_sessions: sessionmaker[Session], recorder: Recorder
) -> None:
    caller = stack_factory.caller(Role.MODERATOR)
    user = stack_factory.user()
    tally = Client(stack.base_url, caller.token, retries=PATIENT, http=recorder.http)
    stack.stop("api")
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(tally.adjust, user.id, 5, comment="across a restart", wait=30)
        _until(lambda: len(recorder.tries) >= 3 or call.done())  # refused, and still trying
        assert not call.done(), f"the call gave up: {call.exception()!r}"
        _restart_api(stack)
        result: Submission = call.result(timeout=120)
    assert result.completed and result.body["user"]["reputation"] == 5
    assert recorder.keys() == {result.idempotency_key}
    assert len(recorder.answers) == 1  # every try before the restart had no answer
    with stack_sessions() as session:
        assert count_rows(session, stack_factory.tenant_id) == (1, 1)


def test_a_call_cut_off_by_a_killed_api_is_retried_into_the_same_request(
    stack_without_workers: Stack,
    stack_factory: Factory,
    stack_sessions: sessionmaker[Session],
    recorder: Recorder,
) -> None:
    stack = stack_without_workers
    caller = stack_factory.caller(Role.MODERATOR)
    user = stack_factory.user()
    tally = Client(stack.base_url, caller.token, retries=PATIENT, http=recorder.http)
    with ThreadPoolExecutor(1) as pool:
        # No worker: the API holds the answer for its default wait, so the kill cuts it off.
        call = pool.submit(tally.adjust, user.id, 5, comment="cut off")
        _until(lambda: _requests(stack_sessions, stack_factory) == 1)
        kill_group(stack, "api")
        _until(lambda: len(recorder.tries) >= 3 or call.done())  # cut off, and it retries
        assert not call.done(), f"the call gave up: {call.exception()!r}"
        _restart_api(stack)
        stack.start_worker("worker1")
        result = call.result(timeout=120)
    final = tally.wait(result, timeout=60)
    assert final.status == "completed" and final.id == result.request_id
    assert result.replayed  # the answer came from the request the first try created
    assert recorder.keys() == {result.idempotency_key}
    with stack_sessions() as session:
        assert count_rows(session, stack_factory.tenant_id) == (1, 1)


def test_a_response_lost_to_the_client_timeout_is_retried_into_the_same_request(
    stack_without_workers: Stack,
    stack_factory: Factory,
    stack_sessions: sessionmaker[Session],
    recorder: Recorder,
) -> None:
    stack = stack_without_workers
    caller = stack_factory.caller(Role.MODERATOR)
    user = stack_factory.user()
    # The server waits 5 s for the worker (its default) before it answers; the client
    # gives each try 1 s, so the first answers are lost while the requests were taken.
    tally = Client(stack.base_url, caller.token, timeout=1.0, retries=PATIENT, http=recorder.http)
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(tally.adjust, user.id, 5, comment="answer lost")
        _until(lambda: len(recorder.tries) >= 2 or call.done())  # one try timed out, a retry
        assert not call.done(), f"the call gave up: {call.exception()!r}"
        assert _requests(stack_sessions, stack_factory) == 1
        stack.start_worker("worker1")
        result = call.result(timeout=120)
    assert result.completed and result.replayed
    assert recorder.keys() == {result.idempotency_key}
    with stack_sessions() as session:
        assert count_rows(session, stack_factory.tenant_id) == (1, 1)


@pytest.fixture
def rate_limited_stack(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Stack:
    """The stack's API allowing each token 3 requests per 5 s window."""
    monkeypatch.setenv("TALLY_RATE_LIMIT", "3/5 seconds")
    stack: Stack = request.getfixturevalue("stack_without_workers")
    return stack


def test_a_429_is_retried_once_after_its_retry_after(
    rate_limited_stack: Stack, stack_factory: Factory, recorder: Recorder
) -> None:
    caller = stack_factory.caller(Role.MODERATOR)
    user = stack_factory.user()
    with Client(rate_limited_stack.base_url, caller.token, http=recorder.http) as tally:
        queued = tally.adjust(user.id, 1, comment="limited", wait=0)
        tally.status(queued.request_id)
        tally.status(queued.request_id)
        assert tally.status(queued.request_id).id == queued.request_id  # the 4th: limited
    assert [a.status_code for a in recorder.answers] == [202, 200, 200, 429, 200]
    announced = float(recorder.answers[3].headers["Retry-After"])
    (limited_at, _, _), (retried_at, _, _) = recorder.tries[3:]
    assert retried_at - limited_at >= announced - 0.05


def test_retries_end_in_unreachable_with_the_cause() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    tries = Retries(attempts=3, backoff=0.01)
    with Client(nowhere, "tly_any", retries=tries) as tally, pytest.raises(Unreachable) as error:
        tally.status(1)
    assert isinstance(error.value.__cause__, httpx.ConnectError)
    assert error.value.status is None and "after 3 tries" in str(error.value)


def test_the_default_budget_is_short_and_its_first_retry_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 24: a caller's thread is not held for a minute without a word."""
    assert Retries().deadline == 15.0
    url = f"http://127.0.0.1:{free_port()}"
    retries = Retries(attempts=3, deadline=5.0, backoff=0.01, max_backoff=0.02)
    with (
        caplog.at_level("INFO", logger="tally_client"),
        Client(url, "tly_x", retries=retries) as tally,
        pytest.raises(Unreachable),
    ):
        tally.adjust(1, 1, comment="nobody listens")
    levels = [(r.levelname, "retrying for up to" in r.getMessage()) for r in caplog.records]
    assert levels == [("WARNING", True), ("INFO", True)]
