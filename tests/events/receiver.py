"""A real webhook receiver for tests: a threaded HTTP server on 127.0.0.1 that records every
request and answers as the test says (a status, a hang past the sender's timeout, a body
and headers), counts the connections it accepted, and can be taken down and brought back
on its port."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cli.embedded import free_port


@dataclass(frozen=True)
class Received:
    """One request as it arrived."""

    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()
    status: int  # what the receiver answered (or meant to, if it hung)

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


# Given the request (headers, body), the status to answer and seconds to wait first.
Behaviour = Callable[[dict[str, str], bytes], tuple[int, float]]


def always(status: int) -> Behaviour:
    return lambda headers, body: (status, 0.0)


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a sender that hangs up (a timeout, keep-alive closed) is no news


class Receiver:
    """Records requests to http://127.0.0.1:<port>/hook; `behaviour` says how to answer."""

    def __init__(self) -> None:
        self.port = free_port()
        self.behaviour: Behaviour = always(200)
        # What every answer carries besides its status.
        self.answer_body = b"ok"
        self.answer_headers: dict[str, str] = {}
        # The Content-Length declared, if not the body's: more than the body leaves the
        # answer unfinished, as from a receiver that stalls while it answers.
        self.answer_length: int | None = None
        self.received: list[Received] = []
        self.connections_accepted = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        # Cleared by `stop` first: a request still being read then is never answered.
        self._up = False
        # Open connections, closed by `stop` too (keep-alive would outlive the listener).
        self._connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with receiver._lock:
                    receiver._connections.add(self.connection)
                    receiver.connections_accepted += 1

            def finish(self) -> None:
                with receiver._lock:
                    receiver._connections.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:
                    # Cut off by `stop` while it arrived: the sender saw no answer and
                    # tries again; a request the receiver never got whole is not one.
                    self.close_connection = True
                    return
                headers = {name.lower(): value for name, value in self.headers.items()}
                status, delay = receiver.behaviour(headers, body)
                with receiver._lock:
                    if not receiver._up:
                        # Taken down while this one arrived: it was never answered.
                        self.close_connection = True
                        return
                    receiver.received.append(Received(headers, body, time.monotonic(), status))
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    for name, value in receiver.answer_headers.items():
                        self.send_header(name, value)
                    length = receiver.answer_length or len(receiver.answer_body)
                    self.send_header("Content-Length", str(length))
                    self.end_headers()
                    self.wfile.write(receiver.answer_body)
                except OSError:
                    pass  # the sender gave up waiting

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = QuietServer(("127.0.0.1", self.port), Handler)
        self._server = server
        with self._lock:
            self._up = True
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Down: the port refuses connections until `start`."""
        with self._lock:
            self._up = False
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def delivered(self) -> list[Received]:
        """The requests answered 2xx, in arrival order."""
        return [r for r in self.requests() if 200 <= r.status < 300]
