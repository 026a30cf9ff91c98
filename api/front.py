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
0.484 ms through it). tally's answers are small JSON documents; a route that must
stream will need a streaming path of its own.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
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
            await self._serve(scope, send)
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
        await self._serve(scope, send)

    async def _serve(self, scope: Scope, send: Send) -> None:
        """Run Flask in a thread, then send what it answered."""
        environ = dict(build_environ(scope, io.BytesIO()))  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        status, headers, body = await loop.run_in_executor(self.threads, self._call_flask, environ)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _call_flask(self, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Flask's answer to `environ`: status, headers and the whole body."""
        started: list[Any] = []
        chunks: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> Any:
            started[:] = [int(status.split(" ", 1)[0]), headers]
            return chunks.append

        answer = self.flask(environ, start_response)
        try:
            chunks.extend(answer)
        finally:
            close = getattr(answer, "close", None)
            if close is not None:
                close()
        status, headers = started
        encoded = [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers
        ]
        return status, encoded, b"".join(chunks)

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
