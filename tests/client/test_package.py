"""The client package itself: standard library and httpx only; Retry-After parsing."""

from __future__ import annotations

import ast
import sys
from datetime import UTC, datetime
from pathlib import Path

import tally_client
from tally_client.retries import Retries, backoff, parse_retry_after


def test_the_client_imports_only_the_standard_library_and_httpx() -> None:
    package = Path(tally_client.__file__).parent
    imported: set[str] = set()
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(), str(module))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    allowed = sys.stdlib_module_names | {"httpx", "tally_client"}
    assert "httpx" in imported
    assert imported - allowed == set()


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    now = datetime(2026, 11, 25, 5, 6, 0, tzinfo=UTC)
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after("Wed, 25 Nov 2026 05:06:30 GMT", now) == 30.0
    assert parse_retry_after("Wed, 25 Nov 2026 05:05:00 GMT", now) == 0.0  # in the past
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") is None


def test_backoff_doubles_up_to_its_ceiling_with_jitter() -> None:
    retries = Retries(backoff=0.5, max_backoff=3.0)
    for tries, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (10, 3.0)]:
        delays = [backoff(tries, retries) for _ in range(50)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 1
