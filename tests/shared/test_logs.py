"""Log lines: one JSON object each, with an RFC 3339 UTC time (issue 24)."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from datetime import UTC, datetime

import pytest

from shared.platform.logs import json_handler, request_id, some_ids


def test_a_line_is_json_with_an_rfc_3339_utc_time_and_the_request_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A local zone that is not UTC, so that local time written as UTC would show.
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        line = _one_line()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line["time"]
    logged = datetime.fromisoformat(line["time"])
    assert abs((logged - datetime.fromisoformat(line["created"])).total_seconds()) < 0.002
    assert (line["level"], line["logger"], line["message"]) == ("INFO", "tally.test", "hello x")
    assert (line["service"], line["request_id"]) == ("api", "req-7")


def _one_line() -> dict[str, str]:
    """One record through the JSON handler, with `created` (its time, UTC) added."""
    handler = json_handler("api")
    stream = io.StringIO()
    handler.setStream(stream)  # type: ignore[attr-defined]
    record = logging.LogRecord("tally.test", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    token = request_id.set("req-7")
    try:
        assert handler.filter(record)
        handler.handle(record)
    finally:
        request_id.reset(token)
    line: dict[str, str] = json.loads(stream.getvalue())
    return line | {"created": datetime.fromtimestamp(record.created, UTC).isoformat()}


def test_a_line_about_many_accounts_names_twenty_and_counts_them_all() -> None:
    ids = [f"acc-{n}" for n in range(5000)]
    assert some_ids("account_ids", ids) == {"account_ids": ids[:20], "account_count": 5000}
