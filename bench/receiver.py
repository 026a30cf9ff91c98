"""A webhook receiver for the benchmarks: answers every POST 204 at once (or after
`latency`) and records, per delivery, the event's id, its `occurred_at` and when it
arrived.

Run in a process of its own (`Receiver.start()`), so that its CPU is neither tally's nor
the benchmark's; `stop()` returns what it recorded. asyncio on uvloop, and httptools
(llhttp, in C) for HTTP/1.1: keep-alive, one connection per sender thread. It shares the
machine with the stack it measures, so it is made cheap: h11 (pure Python) took 129 us
of CPU per delivery here, this 42 (`bench/webhook_sender.py` prints it).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from datetime import datetime
from typing import Any

import httptools
import psutil
import uvloop

ANSWER = b"HTTP/1.1 204 No Content\r\n\r\n"


class _Connection(asyncio.Protocol):
    """One sender's connection; httptools calls the `on_*` methods as it parses."""

    def __init__(self, records: list[tuple[str, float, float]], latency: float) -> None:
        self.records = records
        self.latency = latency
        self.parser = httptools.HttpRequestParser(self)
        self.webhook_id = b""
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.webhook_id = b""
        self.body.clear()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"webhook-id":
            self.webhook_id = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self._record()
        if self.latency:
            # The sender sends nothing more on this connection before the answer.
            asyncio.get_running_loop().call_later(self.latency, self._answer)
        else:
            self._answer()

    def _answer(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(ANSWER)

    def _record(self) -> None:
        arrived = time.time()
        event: dict[str, Any] = json.loads(self.body)
        occurred = datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00"))
        self.records.append((self.webhook_id.decode(), occurred.timestamp(), arrived))


def _serve(port: int, latency: float, ready: Any, stop: Any, out: Any) -> None:
    records: list[tuple[str, float, float]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(records, latency), "127.0.0.1", port)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        server.close()

    uvloop.run(main())
    out.send(records)


class Receiver:
    """`latency`: seconds each answer waits, as a receiver across a network would."""

    def __init__(self, port: int, latency: float = 0.0) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hook"
        self._ready = multiprocessing.Event()
        self._stop = multiprocessing.Event()
        self._records, self._out = multiprocessing.Pipe(duplex=False)
        self._process = multiprocessing.Process(
            target=_serve, args=(port, latency, self._ready, self._stop, self._out), daemon=True
        )

    def start(self) -> Receiver:
        self._process.start()
        if not self._ready.wait(10):
            raise RuntimeError("the bench receiver did not start")
        return self

    def cpu_seconds(self) -> float:
        """The CPU time its process has used so far."""
        times = psutil.Process(self._process.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> list[tuple[str, float, float]]:
        """(webhook-id, occurred_at, arrived) of every delivery, in arrival order."""
        self._stop.set()
        records: list[tuple[str, float, float]] = self._records.recv()
        self._process.join(5)
        return records
