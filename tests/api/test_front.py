"""The front sends a long answer part by part as Flask makes it, and stops when the client goes.

Driven in process through its ASGI interface, as granian drives it: the real export
route, with its blocks and the front's threshold made small so that a few entries make
a long answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

import api.front
import shared.reads.history
from api.front import Front
from shared.intake.adjustments import Adjustment
from shared.models import Role
from tests.factories import Caller, Factory

ENTRIES = 6


class Connection:
    """granian's side of one request: a body-less request, then its disconnect once
    `gone` is set; what the front sends is kept in `sent`."""

    def __init__(self, leave_after_parts: int | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.leave_after_parts = leave_after_parts
        self.gone = asyncio.Event()
        self.read = False

    async def receive(self) -> dict[str, Any]:
        if not self.read:
            self.read = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if self.leave_after_parts is not None and len(self.parts()) >= self.leave_after_parts:
            self.gone.set()
        await asyncio.sleep(0)  # as granian's send may: the loop runs other tasks

    def parts(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] == "http.response.body" and m["body"]]


def _export_scope(caller: Caller) -> dict[str, Any]:
    headers = [(name.lower().encode(), value.encode()) for name, value in caller.headers.items()]
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/api/v2/export",
        "raw_path": b"/api/v2/export",
        "query_string": b"format=ndjson",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


@pytest.fixture
def front(flask_app: Flask, monkeypatch: pytest.MonkeyPatch) -> Iterator[Front]:
    monkeypatch.setattr(shared.reads.history, "EXPORT_BLOCK", 1)  # a block per row
    monkeypatch.setattr(shared.reads.history, "JSON_GROUP", 1)  # a row per line
    monkeypatch.setattr(api.front, "WHOLE_ANSWER_BYTES", 1)  # streamed past its first part
    served = Front(flask_app)
    yield served
    served.threads.shutdown()


@pytest.fixture
def exporter(factory: Factory, award: Callable[..., None]) -> Caller:
    """An admin of a tenant with ENTRIES entries."""
    admin = factory.caller(Role.ADMIN)
    user = factory.user()
    award(admin, *[
        Adjustment(user_id=user.id, points_type="points", amount=n, reason="r")
        for n in range(1, ENTRIES + 1)
    ])  # fmt: skip
    return admin


def _checked_out(flask_app: Flask) -> int:
    return int(flask_app.extensions["tally"].resources.engine.pool.checkedout())


def test_a_long_answer_is_sent_part_by_part_and_whole(
    front: Front, exporter: Caller, flask_app: Flask
) -> None:
    connection = Connection()
    asyncio.run(front(_export_scope(exporter), connection.receive, connection.send))

    start, *bodies = connection.sent
    assert start["type"] == "http.response.start" and start["status"] == 200
    # One part per row, each sent as more is to come, then the end of the answer.
    assert len(bodies) == ENTRIES + 1, bodies
    assert all(body["more_body"] for body in bodies[:-1])
    assert bodies[-1] == {"type": "http.response.body", "body": b""}
    rows = [json.loads(line) for body in bodies for line in body["body"].splitlines()]
    assert [row["amount"] for row in rows] == list(range(1, ENTRIES + 1))
    assert _checked_out(flask_app) == 0  # the export's connection was given back


def test_a_client_that_goes_stops_the_stream_and_frees_its_connection(
    front: Front, exporter: Caller, flask_app: Flask
) -> None:
    connection = Connection(leave_after_parts=2)
    asyncio.run(front(_export_scope(exporter), connection.receive, connection.send))

    # Sending stopped within a part of the client leaving (the check is between parts).
    assert 2 <= len(connection.parts()) <= 3 < ENTRIES, connection.sent
    # Its database connection is back in the pool (closed by the front, or at the latest
    # when the dropped generator was finalized).
    assert _checked_out(flask_app) == 0
