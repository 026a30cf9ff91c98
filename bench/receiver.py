"""A webhook receiver for the benchmarks: answers every POST 204 at once and records, per
delivery, the event's id, its `occurred_at` and when it arrived.

Run in a process of its own (`Receiver.start()`), so that its CPU is neither tally's nor
the benchmark's; `stop()` returns what it recorded. asyncio and h11 (httpx's HTTP/1.1
parser): keep-alive, one connection per sender thread.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from datetime import datetime
from typing import Any

import h11


class _Connection(asyncio.Protocol):
    def __init__(self, records: list[tuple[str, float, float]], latency: float) -> None:
        self.records = records
        self.latency = latency
        self.http = h11.Connection(h11.SERVER)
        self.body = bytearray()
        self.headers: dict[bytes, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.http.receive_data(data)
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if event is h11.PAUSED and self.http.our_state is h11.DONE:
                    self.http.start_next_cycle()
                    continue
                return
            if isinstance(event, h11.Request):
                self.headers = dict(event.headers)
                self.body.clear()
            elif isinstance(event, h11.Data):
                self.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self._record()
                if self.latency:
                    # The sender sends nothing more on this connection before the answer.
                    asyncio.get_running_loop().call_later(self.latency, self._answer)
                    return
                self._answer()
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return

    def _answer(self) -> None:
        answer = h11.Response(status_code=204, headers=[])
        self.transport.write(self.http.send(answer) + self.http.send(h11.EndOfMessage()))
        self.http.start_next_cycle()

    def _record(self) -> None:
        arrived = time.time()
        event: dict[str, Any] = json.loads(self.body)
        occurred = datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00"))
        self.records.append(
            (self.headers.get(b"webhook-id", b"").decode(), occurred.timestamp(), arrived)
        )


def _serve(port: int, latency: float, ready: Any, stop: Any, out: Any) -> None:
    records: list[tuple[str, float, float]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(records, latency), "127.0.0.1", port)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        server.close()

    asyncio.run(main())
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

    def stop(self) -> list[tuple[str, float, float]]:
        """(webhook-id, occurred_at, arrived) of every delivery, in arrival order."""
        self._stop.set()
        records: list[tuple[str, float, float]] = self._records.recv()
        self._process.join(5)
        return records
