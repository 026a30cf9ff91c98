"""The API's front: bodies are read on the event loop, and a thread only gets whole requests.

granian reads a request's head with a deadline, but a WSGI thread reading the body
waits as long as the client trickles it: 40 connections sending one byte a second
held 40 of the threads that serve everyone. So the API is served as ASGI: this front
reads each body on granian's event loop, where a waiting connection costs a few
kilobytes and no thread, and hands the complete request to Flask in a thread pool.
While reading it holds each body to

- its route's byte limit (api.body.body_limit): past it, reading stops and Flask
  answers 413 (the rest is never read, so the connection is closed);
- a deadline: BODY_GRACE_SECONDS, plus a second for every BODY_MIN_RATE bytes that
  arrived. A client slower than that gets a 408 and its connection is closed;
- the process's buffer budget (MAX_BUFFERED_BODIES bytes of bodies being read at
  once): past it, a 503 with Retry-After, so a crowd of large uploads cannot
  exhaust the process's memory.

And it lets one client address have at most `TALLY_MAX_REQUESTS_PER_ADDRESS`
requests in flight (reading or being served); past it, a 429 at once.

The outcome of reading reaches Flask in the ASGI scope (`BODY`, `BODY_ERROR`), where
api.body turns an error into the route's own problem answer; the per-address 429
and the budget's 503 are answered here, without a thread.

Flask runs in the thread with the whole response collected there, then sent from the
loop: one hand-over each way per request. a2wsgi's WSGIMiddleware (whose environ
builder is used here) crosses between the thread and the loop for every message,
and that cost 0.33 ms of CPU per request (/healthz: 0.155 ms under granian's WSGI,
0.484 ms through it). An answer longer than WHOLE_ANSWER_BYTES (the export's stream)
is not collected: it is sent part by part, each part taken from Flask's iterator by
a thread, with granian's backpressure between them (a client that reads slowly holds
no thread, only its unsent parts), and the iterator is closed when the client goes.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from a2wsgi.wsgi import build_environ
from flask import Flask
from werkzeug.exceptions import HTTPException

from api.body import BODY, BODY_ERROR, BodyError, body_limit
from api.metrics import count_answer
from api.problems import Problem
from shared.platform.config import Settings
from shared.platform.logs import request_id_of

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# A body may take this long, plus a second per BODY_MIN_RATE bytes received.
BODY_GRACE_SECONDS = 10.0
BODY_MIN_RATE = 16 * 1024
# An answer up to this long is collected in Flask's thread and sent in one piece; a
# longer one (the export's stream) is sent in parts of about this size, each gathered
# by a thread from what Flask's iterator gives (the export's blocks are 64 KiB).
WHOLE_ANSWER_BYTES = 256 * 1024


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class _Answer:
    """Flask's answer as its thread hands it to the loop."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes  # all of it, or for a long answer the parts read so far
    rest: Iterator[bytes] | None = None  # a long answer's parts still to read
    close: Callable[[], None] = _nothing  # a long answer's iterator, closed once sent


class Front:
    """The ASGI app granian serves: body reading, then Flask in TALLY_API_THREADS threads."""

    def __init__(self, app: Flask) -> None:
        settings: Settings = app.extensions["tally"].resources.settings
        self.settings = settings
        self.flask = app
        self.threads = ThreadPoolExecutor(settings.api_threads, thread_name_prefix="flask")
        self.per_address = settings.max_requests_per_address
        self.budget = 2 * settings.bulk_max_body_bytes
        self.buffered = 0
        self.in_flight: Counter[str] = Counter()
        self.routes = app.url_map.bind("tally")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # granian serves HTTP/1 only (no websockets, no lifespan)
        address = (scope.get("client") or ("unknown", 0))[0]
        if self.in_flight[address] >= self.per_address:
            detail = f"more than {self.per_address} requests in flight from one address"
            await _answer(scope, send, Problem(429, "too-many-requests", detail, headers=_RETRY))
            return
        self.in_flight[address] += 1
        try:
            await self._read_then_serve(scope, receive, send)
        finally:
            self.in_flight[address] -= 1
            if not self.in_flight[address]:
                del self.in_flight[address]

    async def _read_then_serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = _declared_length(scope)
        if declared == 0:
            scope[BODY] = b""
            await self._serve(scope, receive, send)
            return
        # Every route takes the smallest limit: only a larger body needs its route's.
        small = self.settings.max_body_bytes
        limit = small if declared is not None and declared <= small else self._limit(scope)
        if declared is not None and declared > limit:
            scope[BODY_ERROR] = BodyError.TOO_LARGE
        else:
            reserved = limit if declared is None else declared
            if self.buffered + reserved > self.budget:
                detail = "the server is reading too many large bodies; try again shortly"
                problem = Problem(503, "unavailable", detail, headers=_CLOSE | _RETRY)
                await _answer(scope, send, problem)
                return
            self.buffered += reserved
            try:
                await self._read(scope, receive, limit)
            except _Gone:
                return  # nobody to answer
            finally:
                self.buffered -= reserved
        await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run Flask in a thread, then send what it answered."""
        environ = dict(build_environ(scope, io.BytesIO()))  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(self.threads, self._call_flask, environ)
        start = {"type": "http.response.start", "status": answer.status, "headers": answer.headers}
        await send(start)
        if answer.rest is None:
            await send({"type": "http.response.body", "body": answer.body})
        else:
            await self._stream(answer, answer.rest, receive, send)

    def _call_flask(self, environ: dict[str, Any]) -> _Answer:
        """Flask's answer to `environ`: whole, or up to WHOLE_ANSWER_BYTES and the rest to come."""
        started: list[Any] = []
        chunks: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> Any:
            started[:] = [int(status.split(" ", 1)[0]), headers]
            return chunks.append

        answer = self.flask(environ, start_response)
        close = getattr(answer, "close", _nothing)
        parts = iter(answer)
        long = False
        try:
            first = _gather(parts)
            long = first is not None and len(first) > WHOLE_ANSWER_BYTES
        finally:
            if not long:
                close()
        status, headers = started
        encoded = [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers
        ]
        body = b"".join(chunks) + (first or b"")  # what start_response's `write` was given first
        if long:
            return _Answer(status, encoded, body, parts, close)
        return _Answer(status, encoded, body)

    async def _stream(
        self, answer: _Answer, rest: Iterator[bytes], receive: Receive, send: Send
    ) -> None:
        """Send a long answer part by part, each gathered from its iterator by a thread,
        until it ends or the client goes; then close the iterator (in a thread too: the
        export's closes its database connection)."""
        loop = asyncio.get_running_loop()
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            part: bytes | None = answer.body
            while part is not None and not gone.done():
                if part:
                    # Waits while granian holds as many parts as it buffers for the client.
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                part = await loop.run_in_executor(self.threads, _gather, rest)
            await send({"type": "http.response.body", "body": b""})
        finally:
            gone.cancel()
            await loop.run_in_executor(self.threads, answer.close)

    def _limit(self, scope: Scope) -> int:
        """The byte limit of the route the request is for (the smallest one if none)."""
        try:
            endpoint, _ = self.routes.match(scope["path"], scope["method"])
        except HTTPException:
            endpoint = None
        return body_limit(self.settings, endpoint)

    async def _read(self, scope: Scope, receive: Receive, limit: int) -> None:
        """Put the body in the scope, or the reason it could not be read."""
        chunks: list[bytes] = []
        received = 0
        started = time.monotonic()
        more = True
        while more:
            deadline = started + BODY_GRACE_SECONDS + received / BODY_MIN_RATE
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    message = await receive()
            except TimeoutError:
                scope[BODY_ERROR] = BodyError.TOO_SLOW
                return
            if message["type"] == "http.disconnect":
                raise _Gone
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                scope[BODY_ERROR] = BodyError.TOO_LARGE
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        scope[BODY] = b"".join(chunks)


def _gather(parts: Iterator[bytes]) -> bytes | None:
    """The next parts of an answer, joined, up to just over WHOLE_ANSWER_BYTES (None: ended)."""
    gathered: list[bytes] = []
    size = 0
    for part in parts:
        gathered.append(part)
        size += len(part)
        if size > WHOLE_ANSWER_BYTES:
            break
    return b"".join(gathered) if gathered else None


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone (granian says so to a `receive` after the body)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class _Gone(Exception):
    """The client went away before its body was whole."""


_CLOSE = {"Connection": "close"}
_RETRY = {"Retry-After": "1"}


def _declared_length(scope: Scope) -> int | None:
    """The body's length as its head declares it: None for chunked (unknown), else bytes.

    An HTTP/1.1 request with neither Content-Length nor Transfer-Encoding has no body.
    """
    length: int | None = 0
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None  # granian refuses such a head; read it as unknown if not
    return length


async def _answer(scope: Scope, send: Send, problem: Problem) -> None:
    """A problem answered here, without Flask (so without a thread), counted as `front`."""
    count_answer("front", scope["method"], problem.status)
    body = json.dumps(problem.document()).encode()
    headers = [(b"content-type", b"application/problem+json")]
    headers += [(name.lower().encode(), value.encode()) for name, value in problem.headers.items()]
    incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
    headers.append((b"x-request-id", request_id_of(incoming).encode()))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
